"""LlamaGen's network (the release's autoregressive/models/gpt.py): a Llama decoder over VQ-16 codes.

Condition tokens (a class embedding, or FLAN-T5 caption features through an MLP), then the image
tokens in raster order; 2D RoPE on interleaved pairs (zero on condition positions), SwiGLU, RMSNorm in
fp32, no biases. Module names are the state_dict keys of the released c2i_*.pt / t2i_*.pt files. The
configs are in configs.py, the official sampling loop in sample.py, weight loading and the generator in
family.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel import flops as F_
from accel.errors import ArgenError

T2I_NULL_ROWS = 120  # rows of the stored null caption (the release's CaptionEmbedder token_num)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: Optional[int] = None
    multiple_of: int = 256            # SwiGLU hidden size is rounded up to this
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    num_classes: int = 1000
    caption_dim: int = 2048           # t2i: FLAN-T5-XL feature size
    class_dropout_prob: float = 0.1   # > 0 gives the embedding table its null row (index num_classes)
    model_type: str = "c2i"           # "c2i" (class embedding) or "t2i" (caption embedder)
    vocab_size: int = 16384
    cls_token_num: int = 1            # condition positions: 1 (c2i) or 120 (t2i)
    block_size: int = 256             # image tokens: (image_size / 16) ** 2 (toy: (32 / 2) ** 2)


# ----------------------------------------------------------------------------------------------
# Network (module names = state_dict keys of the release)
# ----------------------------------------------------------------------------------------------
class LabelEmbedder(nn.Module):
    """Class id -> one condition token. Row `num_classes` is the null class used for CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # [B, 1, dim]


class CaptionMLP(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2, no biases."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=False)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CaptionEmbedder(nn.Module):
    """Caption features [B, T, caption_dim] -> condition tokens [B, T, dim].

    `uncond_embedding` [120, caption_dim] is the null caption for CFG: drawn once at construction
    (normal / sqrt(caption_dim)), saved with the weights as a buffer and never trained."""

    def __init__(self, caption_dim: int, hidden_size: int, null_rows: int = T2I_NULL_ROWS):
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, hidden_size, hidden_size)
        self.register_buffer("uncond_embedding", torch.randn(null_rows, caption_dim) / caption_dim ** 0.5)

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(caption.to(self.cap_proj.fc1.weight.dtype))


@dataclass
class TextCondition:
    """A batch of prompts as the t2i network takes them: len() and .device like a label tensor."""

    features: torch.Tensor   # [B, T, caption_dim], left-padded, zeros on padding
    mask: torch.Tensor       # [B, T] bool, True on prompt tokens

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def device(self) -> torch.device:
        return self.features.device

    def select(self, rows) -> "TextCondition":
        return TextCondition(self.features[rows], self.mask[rows])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()  # normalised in fp32, then cast back
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = int(2 * (4 * args.dim) / 3)
        if args.ffn_dim_multiplier is not None:
            hidden = int(args.ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, args.multiple_of)
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class KVCache:
    """Static keys/values for every layer, [B, n_kv_head, max_seq, head_dim], written at per-row positions.

    Row b's valid length is whatever the caller says it is: a query at position p only sees keys at
    positions <= p, so entries left beyond a row's length (rejected draft tokens) are invisible and are
    overwritten by the next write. Rolling a row back therefore costs nothing.
    """

    def __init__(self, args: ModelArgs, batch: int, max_seq: int, dtype: torch.dtype, device: torch.device,
                 static: bool = False):
        head_dim = args.dim // args.n_head
        n_kv = args.n_kv_head or args.n_head
        self.max_seq = find_multiple(max_seq, 8)
        shape = (batch, n_kv, self.max_seq, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layer)]
        self.kv_len = 0  # keys [0, kv_len) take part in the current forward
        self.key_valid: torch.Tensor | None = None  # t2i: [B, max_seq] bool, False on padding condition keys
        # static: every forward attends over all max_seq slots (masked), so shapes never change and the step
        # compiles once (torch.compile / CUDA graphs); the masked keys add exact zeros, in another summation order
        self.static = static

    def set_condition_mask(self, cond_mask: torch.Tensor) -> None:
        """cond_mask [B, T] (True = prompt token): keys at the other condition positions are hidden."""
        B, T = cond_mask.shape
        valid = torch.ones(B, self.max_seq, dtype=torch.bool, device=cond_mask.device)
        valid[:, :T] = cond_mask.bool()
        self.key_valid = valid

    def move(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy each row's entries at slots src [B, A] to slots dst [B, A] in every layer (a draft tree's
        accepted path to the row's next positions; its keys were already rotated for those positions)."""
        for cache in (*self.k, *self.v):
            idx = src[:, None, :, None].expand(-1, cache.shape[1], -1, cache.shape[-1])
            cache.scatter_(2, dst[:, None, :, None].expand_as(idx), cache.gather(2, idx))

    def update(self, layer: int, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # input_pos [B, T], or [T] when every row writes the same slots; k, v [B, H, T, D]
        if input_pos.dim() == 1:  # one in-place copy (a compiled step keeps it in place, no cache copy)
            self.k[layer].index_copy_(2, input_pos, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(2, input_pos, v.to(self.v[layer].dtype))
            return self.k[layer][:, :, :self.kv_len], self.v[layer][:, :, :self.kv_len]
        idx = input_pos[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k[layer].scatter_(2, idx, k.to(self.k[layer].dtype))
        self.v[layer].scatter_(2, idx, v.to(self.v[layer].dtype))
        return self.k[layer][:, :, :self.kv_len], self.v[layer][:, :, :self.kv_len]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.dim, self.n_head = args.dim, args.n_head
        self.head_dim = args.dim // args.n_head
        self.n_kv_head = args.n_kv_head or args.n_head
        self.wqkv = nn.Linear(args.dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.wo = nn.Linear(args.dim, args.dim, bias=False)

    def forward(self, x, freqs_cis, mask=None, cache: KVCache | None = None, layer: int = 0, input_pos=None):
        B, T, _ = x.shape
        kv_size = self.n_kv_head * self.head_dim
        q, k, v = self.wqkv(x).split([self.dim, kv_size, kv_size], dim=-1)
        q = apply_rotary_emb(q.view(B, T, self.n_head, self.head_dim), freqs_cis)
        k = apply_rotary_emb(k.view(B, T, self.n_kv_head, self.head_dim), freqs_cis)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, input_pos, k, v)
        if self.n_head != self.n_kv_head:  # grouped-query attention; skipped otherwise (a full copy of the cache)
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.dim))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs_cis, mask=None, cache=None, layer=0, input_pos=None):
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, cache, layer, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.config = args
        self.cls_token_num, self.num_classes, self.vocab_size = args.cls_token_num, args.num_classes, args.vocab_size
        self.block_size, self.model_type = args.block_size, args.model_type
        if args.model_type == "c2i":
            self.cls_embedding = LabelEmbedder(args.num_classes, args.dim, args.class_dropout_prob)
        elif args.model_type == "t2i":
            self.cls_embedding = CaptionEmbedder(args.caption_dim, args.dim)
        else:
            raise ArgenError(f"model_type={args.model_type!r}; expected 'c2i' or 't2i'")
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        grid = int(math.isqrt(args.block_size))
        if grid * grid != args.block_size:
            raise ArgenError(f"block_size={args.block_size} is not a square token grid")
        # a plain attribute, not a buffer: the release has no such key
        self.freqs_cis = precompute_freqs_cis_2d(grid, args.dim // args.n_head, args.rope_base, args.cls_token_num)

    def init_weights(self, zero_output: bool = True) -> None:
        """The official init: normal(0, 0.02) for every linear and embedding, output head zeroed.

        Random-init generators (zero_output=False) instead draw the output head with std 2/sqrt(dim),
        so that logits have std ~2: with a zero head every token would be equally likely, and with
        std 0.02 nearly so, which would make greedy decoding a sequence of near-ties."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.config.initializer_range)
        if isinstance(self.cls_embedding, CaptionEmbedder):  # the null caption, as at construction
            e = self.cls_embedding.uncond_embedding
            e.copy_(torch.randn(e.shape) / e.shape[1] ** 0.5)
        if zero_output:
            nn.init.zeros_(self.output.weight)
        else:
            nn.init.normal_(self.output.weight, mean=0.0, std=2.0 / math.sqrt(self.config.dim))

    def _freqs(self, pos: torch.Tensor, device) -> torch.Tensor:
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        # positions past the grid (padding of finished rows in speculative decoding) reuse the last
        # row; their outputs are thrown away and their keys are never seen by a valid query
        return self.freqs_cis[pos.clamp(max=self.freqs_cis.shape[0] - 1)]

    def condition_rows(self, cond, with_null: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A condition batch -> (what forward() takes as cond_idx, condition key mask or None).

        c2i: cond = class ids [B] -> [B] (or [2B] with the null class appended).
        t2i: cond = TextCondition -> features [B, T, C] (or [2B, ...] with the stored null caption
        appended; the null rows keep their prompt's mask, as the release does) and the mask."""
        if self.model_type == "c2i":
            if isinstance(cond, TextCondition):
                raise ArgenError("this LlamaGen model is class-conditional; pass class ids, not prompt features")
            return (torch.cat([cond, torch.full_like(cond, self.num_classes)]) if with_null else cond), None
        if not isinstance(cond, TextCondition):
            raise ArgenError("this LlamaGen model is text-to-image; pass prompt features (TextCondition), not "
                             "class ids")
        B, T, C = cond.features.shape
        if T != self.cls_token_num or C != self.config.caption_dim or tuple(cond.mask.shape) != (B, T):
            raise ArgenError(f"prompt features of shape {tuple(cond.features.shape)} with mask "
                             f"{tuple(cond.mask.shape)}; this model takes [B, {self.cls_token_num}, "
                             f"{self.config.caption_dim}] and [B, {self.cls_token_num}]")
        null = self.cls_embedding.uncond_embedding[:T]
        feats, mask = cond.features.to(null.dtype), cond.mask.bool()  # the weights' precision, as the release's
        if with_null:
            null = null.expand(B, -1, -1)
            feats, mask = torch.cat([feats, null]), torch.cat([mask, mask])
        return feats, mask

    def forward(self, idx: torch.Tensor | None, cond_idx: torch.Tensor | None,
                input_pos: torch.Tensor | None = None, cache: KVCache | None = None,
                cond_mask: torch.Tensor | None = None, rope_pos: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, features: bool = False):
        """Logits [B, T, V] (fp32); with features=True also the last hidden states after the final norm
        [B, T, dim] (what an EAGLE drafter reads).

        Full (training-style) forward: idx [B, T] image tokens and cond_idx (class ids [B], or caption
        features [B, cls_token_num, caption_dim] with cond_mask [B, cls_token_num]), no cache; returns the
        logits of all cls_token_num + T positions (position i predicts image token i - cls_token_num + 1).
        Cached: either cond_idx (prefill; t2i with cond_mask, kept in the cache) or idx (decode) with
        input_pos [B, T] (or [T]) and a cache. input_pos are the cache slots written; by default they are
        also the positions (RoPE) and a token sees the keys at slots <= its own. A draft tree passes its
        nodes' positions as rope_pos [B, T] and what each node sees as attn_mask [B, 1, T, kv_len] (its
        context and its ancestors), its nodes sitting in distinct slots.
        """
        if cache is None:
            h = torch.cat([self.cls_embedding(cond_idx)[:, :self.cls_token_num], self.tok_embeddings(idx)], dim=1)
            freqs = self._freqs(torch.arange(h.shape[1], device=h.device), h.device)
            mask = None
            if cond_mask is not None:
                S = h.shape[1]
                pos = torch.arange(S, device=h.device)
                valid = torch.ones(h.shape[0], S, dtype=torch.bool, device=h.device)
                valid[:, :cond_mask.shape[1]] = cond_mask.bool()
                mask = (pos[None, :, None] >= pos[None, None, :]) & (valid[:, None, :] | torch.eye(
                    S, dtype=torch.bool, device=h.device)[None])
                mask = mask[:, None]                                           # [B, 1, S, S]
        else:
            h = self.cls_embedding(cond_idx)[:, :self.cls_token_num] if cond_idx is not None else self.tok_embeddings(idx)
            B, T = h.shape[:2]
            slots = input_pos  # [T] when the rows share their positions: the cache writes them in one copy
            if input_pos.dim() == 1:
                input_pos = input_pos[None].expand(B, -1)
            elif rope_pos is None and attn_mask is None and input_pos.shape[0] == 1:
                slots = input_pos[0]
            if cond_mask is not None:
                cache.set_condition_mask(cond_mask)
            if cache.static:  # no host sync, no shape that depends on the position
                cache.kv_len = cache.max_seq
            else:
                cache.kv_len = int(input_pos.max()) + 1
                if cache.kv_len > cache.max_seq:
                    raise ArgenError(f"position {cache.kv_len - 1} is past the KV cache length {cache.max_seq}")
            keys = torch.arange(cache.kv_len, device=h.device)
            if attn_mask is None:
                mask = (keys[None, None, :] <= input_pos[:, :, None])[:, None]  # [B, 1, T, kv_len]
            else:
                mask = attn_mask
            if cache.key_valid is not None:  # t2i: padding condition keys hidden, except from themselves
                seen = cache.key_valid[:, None, :cache.kv_len] | (keys[None, None, :] == input_pos[:, :, None])
                mask = mask & seen[:, None]
            freqs = self._freqs(input_pos if rope_pos is None else rope_pos, h.device)  # [B, T, hd/2, 2]
        for i, layer in enumerate(self.layers):
            h = layer(h, freqs, mask, cache, i, slots if cache is not None else input_pos)
        h = self.norm(h)
        logits = self.output(h).float()
        return (logits, h) if features else logits

    def forward_flops(self, rows: int, n_q: int, n_kv: int, prefill: bool = False) -> float:
        """Analytic FLOPs of one forward: `rows` sequences, n_q new tokens each, n_kv keys attended
        (prefill: the condition tokens, which for t2i also pass the caption MLP)."""
        a = self.config
        head_dim, n_kv_head = a.dim // a.n_head, a.n_kv_head or a.n_head
        hidden = self.layers[0].feed_forward.w1.out_features if len(self.layers) else 0
        n = rows * n_q
        extra = 0.0
        if prefill and a.model_type == "t2i":  # the caption MLP
            extra = F_.linear(n, a.caption_dim, a.dim) + F_.linear(n, a.dim, a.dim)
        per_layer = (F_.linear(n, a.dim, (a.n_head + 2 * n_kv_head) * head_dim)
                     + rows * F_.attention(n_q, n_kv, a.dim)
                     + F_.linear(n, a.dim, a.dim)
                     + 3 * F_.linear(n, a.dim, hidden))
        return a.n_layer * per_layer + F_.linear(n, a.dim, a.vocab_size) + extra


def precompute_freqs_cis_2d(grid_size: int, n_elem: int, base: float = 10000, cls_token_num: int = 1) -> torch.Tensor:
    """cos/sin table [cls_token_num + grid^2, n_elem/2, 2] for 2D RoPE.

    The first half of the rotated pairs turn with the row index, the second half with the column
    index. The condition positions get cos = sin = 0, so their queries and keys are zero after RoPE
    (as in the release: the condition acts only through its value vector).
    """
    half = n_elem // 2
    inv_freq = 1.0 / (base ** (torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half))
    angles_1d = torch.outer(torch.arange(grid_size, device="cpu").float(), inv_freq)  # [grid, half/2]
    rows = angles_1d[:, None, :].expand(-1, grid_size, -1)
    cols = angles_1d[None, :, :].expand(grid_size, -1, -1)
    angles = torch.cat([rows, cols], dim=-1).flatten(0, 1)                             # [grid^2, half]
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device="cpu"), table])


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]). x [B, T, H, D]; freqs [T, D/2, 2] or [B, T, D/2, 2]."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis.view(1, *freqs_cis.shape) if freqs_cis.dim() == 3 else freqs_cis
    f = f[:, :, None]  # broadcast over heads
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)
