"""LazyMAR (Yan et al., ICCV 2025): training-free feature caching for MAR, as three switchable caches.

MAR recomputes its whole bidirectional transformer on every decoding step, for both CFG branches, and its
diffusion head for 100 DDPM steps per token. LazyMAR reuses what barely changes between steps:

* token cache (`token_cache`)
  - encoder: an incremental KV cache. On a lazy step only the 64 buffer tokens and the tokens generated on
    the previous step are run (queries); their keys/values overwrite the buffer's and are appended after the
    cached ones; older visible tokens keep the keys/values of the step where they were last computed.
  - decoder: the input sequence is the cached one with the buffer and the newly generated places refreshed.
    Layers before `select_layer` run on all 320 tokens. At `select_layer`, after attention, each token is
    scored by the cosine similarity of its V to the previous step's V (mean over heads); the tokens to predict
    now and those generated on the previous step are always kept, then the least similar (most changed)
    ones, `max(forced + keep_slack, floor(320 * retain ratio))` in all. Only the kept tokens go through the
    rest of the decoder; their new keys/values are written into the cached ones, which all queries attend to.
* condition cache (`condition_cache`): on full steps the difference uncond - cond of the last decoder
  layer's output (before the final norm) is stored; on lazy steps only the conditional branch runs and the
  unconditional one is cond + that difference.
* head cache (`head_cache`, in upstream's code, not its paper): inside each step's DDPM chain, full
  timesteps (the first, then every `head_refresh_interval`-th index) run the head normally and store the
  eps difference cond - uncond, every block's MLP output and the residual update of `head_skip_blocks`.
  Other timesteps run the conditional half only (uncond eps = cond eps - stored difference), skip the
  listed blocks (adding their stored update) and reuse the other blocks' MLP outputs (their adaLN is
  recomputed), except in the first `head_warmup` fraction of the chain, where MLPs are always recomputed.

Full steps of the transformer (token and condition caches): the first `warmup_steps` steps, then every
`refresh_interval`-th. Upstream hard-codes 5 / 9, layer 3, slack 15 and a 64-entry retain table indexed by
step (so it fails beyond 64 steps); here the table is a function of decoding progress step / num_iter with
the same breakpoints, which reproduces upstream exactly at 64 steps and works at 32, 128 or 256.
Setting refresh_interval=1 and head_refresh_interval=1 makes every step and timestep full: the output is then
bitwise that of accel="none".

One deliberate difference: upstream marks forced tokens with score 0, so a token whose V similarity is
negative could displace one that must be predicted; here forced tokens get -inf and are always kept.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from accel.errors import ArgenError
from accel.flops import count
from accel.options import option_int, parse_options
from accel.registry import Method

# Upstream's 64-entry RETAIN_RATIO_SCHEDULE as (progress from which it applies, ratio): steps 0-19 keep all,
# 20: 0.6, 21-24: 0.5, 25-29: 0.4, 30-34: 0.15, 35-39: 0.12, 40-63: 0.05 (the slack floor then dominates).
DEFAULT_RETAIN_SCHEDULE = ((0.0, 1.0), (20 / 64, 0.6), (21 / 64, 0.5), (25 / 64, 0.4), (30 / 64, 0.15),
                           (35 / 64, 0.12), (40 / 64, 0.05))


@dataclasses.dataclass(frozen=True)
class LazyMARConfig:
    token_cache: bool = True
    condition_cache: bool = True
    head_cache: bool = True
    warmup_steps: int = 5          # steps 0 .. warmup_steps-1 are full
    refresh_interval: int = 9      # then every refresh_interval-th step is full (1 = every step)
    select_layer: int = 3          # decoder layer whose V similarity picks the tokens to recompute
    retain_schedule: tuple = DEFAULT_RETAIN_SCHEDULE  # ((progress, ratio), ...), progress = step / num_iter
    keep_slack: int = 15           # tokens kept beyond the forced ones, at least
    head_refresh_interval: int = 7  # full DDPM timesteps: the first and every index divisible by this
    head_warmup: float = 0.1       # MLPs recomputed while index > (1 - head_warmup) * timesteps
    head_skip_blocks: tuple = (1, 2, 3, 4)  # head blocks replaced by their stored update between full timesteps


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(LazyMARConfig))


def _retain_schedule(value: Any) -> tuple[tuple[float, float], ...]:
    how = ("expected a list of [progress, ratio] pairs with progress rising from 0 (step / num_iter) and every "
           "ratio in (0, 1], e.g. [[0, 1.0], [0.5, 0.2]], or one ratio for every step")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [[0.0, value]]
    try:
        pairs = [(float(p), float(r)) for p, r in value]
    except (TypeError, ValueError):
        raise ArgenError(f"lazymar option retain_schedule={value!r}: {how}") from None
    if not pairs or pairs[0][0] != 0.0:
        raise ArgenError(f"lazymar option retain_schedule={value!r}: the first pair must start at progress 0; {how}")
    for (p0, _), (p1, _) in zip(pairs, pairs[1:]):
        if not p1 > p0:
            raise ArgenError(f"lazymar option retain_schedule={value!r}: progress {p1} does not rise after {p0}; {how}")
    for p, r in pairs:
        if not 0.0 <= p < 1.0:
            raise ArgenError(f"lazymar option retain_schedule={value!r}: progress {p} is outside [0, 1); {how}")
        if not (0.0 < r <= 1.0):
            raise ArgenError(f"lazymar option retain_schedule={value!r}: retain ratio {r} is outside (0, 1]; {how}")
    return tuple(pairs)


def check_options(model_config: dict, guided: bool, **options) -> LazyMARConfig:
    """The settings for one MAR model: names and types through accel.options, then the ranges its depths allow."""
    c = parse_options(LazyMARConfig, options, "accel=lazymar")
    dec_depth, head_depth = model_config["decoder_depth"], model_config["diffloss_d"]
    option_int("warmup_steps", c.warmup_steps, 0, hint="full steps before caching starts")
    option_int("refresh_interval", c.refresh_interval, 1, hint="1 = every step is full")
    option_int("select_layer", c.select_layer, 0, dec_depth - 1,
               hint=f"a decoder layer index; this model has {dec_depth} decoder layers")
    option_int("keep_slack", c.keep_slack, 0)
    option_int("head_refresh_interval", c.head_refresh_interval, 1, hint="1 = every DDPM timestep is full")
    if not 0.0 <= c.head_warmup <= 1.0:
        raise ArgenError(f"lazymar option head_warmup={c.head_warmup!r}: expected a fraction of the DDPM chain in "
                         f"[0, 1]")
    try:
        blocks = tuple(sorted({int(b) for b in c.head_skip_blocks}))
    except (TypeError, ValueError):
        blocks = None
    if blocks is None or any(not 0 <= b < head_depth for b in blocks):
        raise ArgenError(f"lazymar option head_skip_blocks={c.head_skip_blocks!r}: expected a list of head block "
                         f"indices in [0, {head_depth}) (this model's head has {head_depth} blocks)")
    condition_cache = c.condition_cache
    if condition_cache and not guided:
        warnings.warn("lazymar: condition_cache needs the two CFG branches (conditional and unconditional), but "
                      "cfg=1.0 runs only one, so the condition cache is switched off (and the head cache does not "
                      "cache a CFG difference). Set cfg > 1, or condition_cache=false to silence this warning.")
        condition_cache = False
    return dataclasses.replace(c, head_skip_blocks=blocks, retain_schedule=_retain_schedule(c.retain_schedule),
                               condition_cache=condition_cache)


class LazyMAR:
    """The method: its settings, fresh caches per generate() call, and their counters."""

    def __init__(self, model_config: dict, guided: bool, **options):
        self.model_config = model_config
        self.guided = guided
        self.config = check_options(model_config, guided, **options)

    def is_full_step(self, step: int) -> bool:
        c = self.config
        return step < c.warmup_steps or (step - c.warmup_steps) % c.refresh_interval == 0

    def retain_ratio(self, step: int, num_iter: int) -> float:
        progress = step / num_iter
        ratio = 1.0
        for start, r in self.config.retain_schedule:
            if progress >= start:
                ratio = r
        return ratio

    def new_caches(self, batch: int) -> tuple["TransformerCache", "HeadCache | None"]:
        return TransformerCache(self, batch), (HeadCache(self) if self.config.head_cache else None)

    def stats(self, cache: "TransformerCache", head: "HeadCache | None") -> dict[str, float]:
        out = {"full_steps": cache.full_steps, "steps": cache.steps}
        for group in cache.done:
            out[f"recomputed_fraction_{group}"] = cache.done[group] / max(cache.base[group], 1)
        if head is not None:
            out["head_full_timesteps"] = head.full_timesteps
            out["head_timesteps"] = head.timesteps
        return out


class TransformerCache:
    """Token cache and condition cache for one generate() call (the TransformerCache hooks of accel/families/mar/hooks.py)."""

    def __init__(self, method: LazyMAR, batch: int):
        c, mc = method.config, method.model_config
        self.method, self.batch, self.guided = method, batch, method.guided
        self.token, self.condition = c.token_cache, c.condition_cache
        # rows the token cache keeps: only the conditional branch when the condition cache stands in for
        # the unconditional one on lazy steps
        self.rows = batch * (2 if self.guided and not self.condition else 1)
        self.buffer, self.seq = mc["buffer_size"], (mc["img_size"] // mc["vae_stride"] // mc["patch_size"]) ** 2
        self.select_layer, self.dec_depth, self.enc_depth = c.select_layer, mc["decoder_depth"], mc["encoder_depth"]
        self.dec_dim, self.dec_heads = mc["decoder_embed_dim"], mc["decoder_num_heads"]
        self.enc_hooks = [EncoderLayer(self, i) for i in range(self.enc_depth)]
        self.dec_hooks = [DecoderLayer(self, i) for i in range(self.dec_depth)]
        self.enc_k: list[torch.Tensor | None] = [None] * self.enc_depth
        self.enc_v: list[torch.Tensor | None] = [None] * self.enc_depth
        self.dec_k: dict[int, torch.Tensor] = {}
        self.dec_v: dict[int, torch.Tensor] = {}
        self.prev_v: torch.Tensor | None = None     # V at select_layer on the previous step
        self.decoder_input: torch.Tensor | None = None
        self.diff: torch.Tensor | None = None        # uncond - cond after the last decoder layer
        self.cur_pred: torch.Tensor | None = None
        self.prev_pred: torch.Tensor | None = None
        self.enc_len = self.enc_old = 0              # visible tokens with cached encoder keys/values
        self.full, self.steps, self.full_steps = True, 0, 0
        self.done = {"encoder": 0, "decoder_early": 0, "decoder_late": 0}  # token-layers computed ...
        self.base = dict(self.done)                  # ... and what accel="none" computes

    # -- per step ---------------------------------------------------------------------------------------
    def begin_step(self, step: int, num_iter: int, mask: torch.Tensor, mask_to_pred: torch.Tensor) -> None:
        self.full = self.method.is_full_step(step) or not (self.token or self.condition)
        self.prev_pred, self.cur_pred = self.cur_pred, mask_to_pred
        self.retain = self.method.retain_ratio(step, num_iter)
        self.n_query = self.n_keep = None
        self.steps += 1
        self.full_steps += int(self.full)

    def runs_uncond(self) -> bool:
        return self.full or not self.condition

    @property
    def lazy_tokens(self) -> bool:
        return self.token and not self.full

    def _per_row(self, m: torch.Tensor) -> torch.Tensor:
        return torch.cat([m, m]) if self.rows == 2 * m.shape[0] else m

    # -- encoder ----------------------------------------------------------------------------------------
    def encoder_positions(self, positions: torch.Tensor) -> torch.Tensor:
        rows, n_visible = positions.shape[0], positions.shape[1] - self.buffer
        self._rows_run = rows
        self._count_base("encoder", (self.buffer + n_visible) * self.enc_depth)
        if not self.lazy_tokens:
            self.enc_len = n_visible
            self.done["encoder"] += rows * positions.shape[1] * self.enc_depth
            return positions
        new = self._per_row(self.prev_pred).nonzero(as_tuple=True)[1].reshape(rows, -1) + self.buffer
        self.enc_old, self.enc_len = self.enc_len, self.enc_len + new.shape[1]
        if self.enc_len != n_visible:
            raise RuntimeError(f"lazymar encoder cache out of step: {self.enc_len} cached vs {n_visible} visible")
        buffer = torch.arange(self.buffer, device=positions.device).expand(rows, -1)
        self.done["encoder"] += rows * (self.buffer + new.shape[1]) * self.enc_depth
        return torch.cat([buffer, new], dim=1)

    def encoder_layer(self, i: int):
        return self.enc_hooks[i] if self.token else None

    # -- decoder ----------------------------------------------------------------------------------------
    def decoder_base(self, base: torch.Tensor) -> torch.Tensor:
        return self.decoder_input if self.lazy_tokens else base

    def store_decoder_input(self, x: torch.Tensor) -> None:
        if self.token:
            self.decoder_input = x[:self.rows]

    def decoder_layer(self, i: int):
        return self.dec_hooks[i] if self.token else None

    def select(self, score: torch.Tensor) -> None:
        """Keep the forced tokens and the least similar others; sets the kept places [rows, n_keep]."""
        rows, N = score.shape
        pad = score.new_zeros(rows, self.buffer, dtype=torch.bool)
        forced = torch.cat([pad, self._per_row(self.cur_pred) | self._per_row(self.prev_pred)], dim=1)
        score = score.masked_fill(forced, float("-inf"))
        n_forced = int(forced[0].sum())
        self.n_keep = min(N, max(n_forced + self.method.config.keep_slack, int(N * self.retain)))
        keep = score.topk(self.n_keep, dim=1, largest=False).indices.sort(dim=1).values
        self.keep_x = keep.unsqueeze(-1).expand(-1, -1, self.dec_dim)
        self.keep_kv = keep[:, None, :, None].expand(-1, self.dec_heads, -1, self.dec_dim // self.dec_heads)
        count("lazymar", 6.0 * rows * N * self.dec_dim)  # the cosine similarities

    def decoder_output(self, x: torch.Tensor) -> torch.Tensor:
        rows, N = x.shape[0], self.buffer + self.seq
        if self.lazy_tokens:  # kept tokens back in place; the others are never read (only predicted ones are)
            x = x.new_zeros(rows, N, x.shape[-1]).scatter(1, self.keep_x, x)
        late = self.dec_depth - self.select_layer
        self._count_base("decoder_early", N * self.select_layer)
        self._count_base("decoder_late", N * late)
        self.done["decoder_early"] += rows * N * self.select_layer
        self.done["decoder_late"] += rows * (self.n_keep if self.lazy_tokens else N) * late
        if self.condition:
            if self.full:
                self.diff = x[self.batch:] - x[:self.batch]
            else:
                x = torch.cat([x, x + self.diff])
        return x

    def _count_base(self, group: str, per_row: int) -> None:
        self.base[group] += self.batch * (2 if self.guided else 1) * per_row


class EncoderLayer:
    """keys_values hook of encoder layer i: record keys/values on full steps, extend them on lazy ones."""

    def __init__(self, cache: TransformerCache, index: int):
        self.cache, self.index = cache, index

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, i, nb = self.cache, self.index, self.cache.buffer
        if c.enc_k[i] is None:
            shape = (c.rows, k.shape[1], nb + c.seq, k.shape[3])
            c.enc_k[i], c.enc_v[i] = k.new_zeros(shape), v.new_zeros(shape)
        K, V = c.enc_k[i], c.enc_v[i]
        if not c.lazy_tokens:
            K[:, :, :k.shape[2]] = k[:c.rows]
            V[:, :, :v.shape[2]] = v[:c.rows]
            return k, v
        start, end = nb + c.enc_old, nb + c.enc_len
        K[:, :, :nb], V[:, :, :nb] = k[:, :, :nb], v[:, :, :nb]            # the buffer, recomputed
        K[:, :, start:end], V[:, :, start:end] = k[:, :, nb:], v[:, :, nb:]  # newly visible tokens, appended
        return K[:, :, :end], V[:, :, :end]

    def after_attention(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DecoderLayer:
    """Hooks of decoder layer i: from select_layer on, record keys/values (and V for the similarity) on
    full steps; on lazy steps select the tokens at select_layer and update the cache after it."""

    def __init__(self, cache: TransformerCache, index: int):
        self.cache, self.index = cache, index

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, i = self.cache, self.index
        if i < c.select_layer:
            return k, v
        if not c.lazy_tokens:
            if i == c.select_layer:
                c.prev_v = v[:c.rows].contiguous()
            else:
                c.dec_k[i], c.dec_v[i] = k[:c.rows].contiguous(), v[:c.rows].contiguous()
            return k, v
        if i == c.select_layer:
            score = F.cosine_similarity(v.float(), c.prev_v.float(), dim=-1).mean(dim=1)  # [rows, N]
            c.prev_v = v.contiguous()
            c.select(score)
            return k, v
        c.dec_k[i].scatter_(2, c.keep_kv, k)
        c.dec_v[i].scatter_(2, c.keep_kv, v)
        return c.dec_k[i], c.dec_v[i]

    def after_attention(self, x: torch.Tensor) -> torch.Tensor:
        c = self.cache
        if c.lazy_tokens and self.index == c.select_layer:
            return x.gather(1, c.keep_x)
        return x


class HeadCache:
    """The diffusion head's cache for one generate() call (the HeadCache hooks of accel/families/mar/hooks.py)."""

    def __init__(self, method: LazyMAR):
        c = method.config
        self.interval, self.warmup, self.skip = c.head_refresh_interval, c.head_warmup, set(c.head_skip_blocks)
        self.delta: dict[int, torch.Tensor] = {}
        self.mlp: dict[int, torch.Tensor] = {}
        self.cfg_delta: torch.Tensor | None = None
        self.full, self.recompute_mlp = True, True
        self.timesteps = self.full_timesteps = 0

    def begin(self, i: int, num_timesteps: int) -> None:
        if i == num_timesteps - 1:  # a new chain: nothing carries over between decoding steps
            self.delta.clear()
            self.mlp.clear()
            self.cfg_delta = None
        self.full = i == num_timesteps - 1 or i % self.interval == 0
        self.recompute_mlp = self.full or i > (1.0 - self.warmup) * num_timesteps
        self.timesteps += 1
        self.full_timesteps += int(self.full)

    def skips_block(self, j: int) -> bool:
        return not self.full and j in self.skip

    def block_delta(self, j: int, n: int) -> torch.Tensor:
        return self.delta[j][:n]

    def store_block_delta(self, j: int, x: torch.Tensor, x_in: torch.Tensor) -> None:
        if self.full and j in self.skip:
            self.delta[j] = x - x_in

    def reuse_mlp(self, j: int, n: int) -> torch.Tensor | None:
        return None if self.recompute_mlp else self.mlp[j][:n]

    def store_mlp(self, j: int, h: torch.Tensor) -> None:
        self.mlp[j] = h

    def store_cfg_delta(self, delta: torch.Tensor) -> None:
        self.cfg_delta = delta


def check(name: str, *, config: dict, guided: bool, options: dict[str, Any]) -> LazyMAR:
    """The settings for one MAR model (its decoder and head depths bound the layer options)."""
    return LazyMAR(config, guided=guided, **options)


# the paper's and the release's evaluation run 64 MAR steps (its retain schedule has 64 entries), where MAR's
# own FID setting is 256
METHODS = (Method(name="lazymar", family="mar", option_names=OPTION_NAMES, check=check,
                  sampling_defaults={"num_iter": 64}),)
