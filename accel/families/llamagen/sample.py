"""LlamaGen's official sampling loop (the release's autoregressive/models/generate.py).

Sampling (`generate_tokens`) is the official loop: CFG by batch doubling with the null class
`num_classes`, the same token fed to both halves, guidance on logits, then temperature, top-k and
top-p, `cfg_interval`, a static KV cache. Accelerations plug in through hooks.py.

Options (`load_generator(..., **options)`): cfg (guidance scale; default per model as in the
paper's FID runs, 7.5 for t2i as the release's t2i samplers), cfg_interval (-1), temperature (1.0),
top_k (0 = off; 1000 for t2i), top_p (1.0), greedy (False; True = argmax, the official
`sample_logits=False`), draw ("argen"; "release": torch.multinomial as the release, plain decoding only).
t2i only: text_encoder (local FLAN-T5-XL folder, required) and clean_prompts (True). Speculative options are
listed in accel/methods/speculative.py.
"""
from __future__ import annotations

import torch

from accel import flops as F_
from accel.families.llamagen.configs import SamplingOptions
from accel.families.llamagen.network import KVCache, Transformer
from accel.sampling import draw_rows


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit below the k-th largest, then outside the smallest set whose
    probability reaches top_p (that set always keeps the most likely token). Works on [..., V]."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the token that crosses top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    if opts.greedy:  # the argmax is the same either way; LANTERN's greedy verifier (as released) relaxes the
        return logits.softmax(-1)  # plain softmax, so neighbours outside top-k keep their mass
    logits = logits / max(opts.temperature, 1e-5)
    if opts.top_k > 0 or opts.top_p < 1.0:
        logits = top_k_top_p_filtering(logits, int(opts.top_k), opts.top_p)
    return logits.softmax(-1)


def guided_logits(logits: torch.Tensor, opts: SamplingOptions, token_index: torch.Tensor | int) -> torch.Tensor:
    """[2B, ..., V] (cond rows, then null rows) -> [B, ..., V]. token_index: int, or [B, T] per position."""
    if opts.cfg <= 1.0:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    mixed = uncond + (cond - uncond) * opts.cfg
    if opts.cfg_interval <= -1:
        return mixed
    if isinstance(token_index, int):
        return mixed if opts.uses_cfg(token_index) else cond
    use = (token_index - 1 <= opts.cfg_interval)[..., None]  # [B, T, 1]
    return torch.where(use, mixed, cond)


def cfg_rows(x: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Feed the same tokens (or positions) to the conditional and the unconditional half."""
    return torch.cat([x, x]) if opts.cfg > 1.0 else x


class CFGModel:
    """A Transformer with its KV cache and CFG doubling: the object that both the plain loop and
    speculative decoding drive. Rows are samples (the null half is handled inside)."""

    def __init__(self, model: Transformer, opts: SamplingOptions, batch: int, max_seq: int, component: str,
                 forward=None):
        """forward: the model's forward compiled for static shapes (CompiledForward), or None for eager."""
        self.model, self.opts, self.component = model, opts, component
        self.forward = forward or model
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        self.rows = batch * (2 if opts.cfg > 1.0 else 1)
        self.cache = KVCache(model.config, self.rows, max_seq, dtype, device, static=forward is not None)
        self.device = device
        self.calls = 0

    def prefill(self, cond) -> torch.Tensor:
        """Condition tokens at positions [0, cls_token_num) -> guided logits [B, V] for image token 0.

        cond: class ids [B] (c2i) or a TextCondition (t2i); the null half is added here."""
        rows, cond_mask = self.model.condition_rows(cond, with_null=self.opts.cfg > 1.0)
        T = self.model.cls_token_num
        pos = torch.arange(T, device=self.device)
        logits = self.forward(None, rows, pos, cache=self.cache, cond_mask=cond_mask)[:, -1]
        self._count(T, prefill=True)
        return guided_logits(logits, self.opts, 0)

    def decode(self, tokens: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] holding image tokens token_index [B, T] (or [T], the same for every row) -> guided
        logits [B, T, V]; the logits at (b, t) predict image token token_index[b, t] + 1."""
        pos = token_index + self.model.cls_token_num
        pos = pos if pos.dim() == 1 else cfg_rows(pos, self.opts)  # shared positions: one cache copy per layer
        logits = self.forward(cfg_rows(tokens, self.opts), None, pos, cache=self.cache)
        self._count(tokens.shape[1])
        return guided_logits(logits, self.opts, token_index + 1)

    def _count(self, n_q: int, prefill: bool = False) -> None:
        self.calls += 1
        F_.count(self.component, self.model.forward_flops(self.rows, n_q, self.cache.kv_len, prefill))


def pick(probs: torch.Tensor, opts: SamplingOptions, generators: list[torch.Generator],
         rows: list[int] | None = None) -> torch.Tensor:
    """One token per row: argmax when greedy, else a draw with that row's generator. probs [B, V]."""
    if opts.greedy:
        return probs.argmax(-1)
    return draw_rows(probs[:, None], generators, rows, opts.draw)[:, 0]


def generate_tokens(model: Transformer, labels, opts: SamplingOptions, generators: list[torch.Generator],
                    forward=None) -> torch.Tensor:
    """The official loop (accel=none): prefill samples token 0, then one cached step per token.

    labels: class ids [B] (c2i) or a TextCondition (t2i). forward: a compiled forward (static KV cache)."""
    B, N = len(labels), model.block_size
    runner = CFGModel(model, opts, B, model.cls_token_num + N, "target", forward)
    seq = torch.empty(B, N, dtype=torch.long, device=labels.device)
    seq[:, 0] = pick(logits_to_probs(runner.prefill(labels), opts), opts, generators)
    for t in range(1, N):
        index = torch.full((1,), t - 1, device=labels.device, dtype=torch.long)  # every row at the same token
        logits = runner.decode(seq[:, t - 1:t], index)[:, -1]
        seq[:, t] = pick(logits_to_probs(logits, opts), opts, generators)
    return seq
