"""The EAGLE drafter of LANTERN's release (models/drafters/cnets_llamagen.py): one decoder layer over the
target's features, sharing the target's output head.

At drafter position s the input is the pair (embedding of image token z_s, the target's last hidden state
h_s after its final RMSNorm), and the output is a prediction of h_{s+1}; the target's `output` head turns
it into the distribution of the next token. With the target's condition positions in front (c2i: one
class position, t2i: 120 caption positions), drafter position s pairs base position s with the token at
base position s + 1, so the drafter sequence is one shorter than the target's and its first
cls_token_num - 1 positions carry token id 0 (t2i only).

    x = fc(cat([embed_tokens(z), h]))                  no activation; fc has a bias
    x = x + self_attn(x)                               no input norm on the first (only) layer, as EAGLE
    x = x + mlp(post_attention_layernorm(x))           SwiGLU: down(silu(gate x) * up x)

Keys (the release's state_dict, loaded strictly): embed_tokens.weight [V, H] (frozen, a copy of the
target's token embedding), fc.weight [H, 2H], fc.bias [H], layers.0.self_attn.{q,k,v,o}_proj.weight
[H, H] (no biases), layers.0.mlp.{gate,up}_proj.weight [I, H], layers.0.mlp.down_proj.weight [H, I],
layers.0.post_attention_layernorm.weight [H]. H, heads and I are the target's (the release's drafter config
is the base config with one layer); RMSNorm eps 1e-6. No final norm, no head of its own.

Positions: LlamaGen's 2D RoPE on interleaved pairs, the table of the target shifted by one (cls_token_num -
1 zero rows, then the grid in raster order), so the drafter position of token z_n turns with grid cell n,
as the target's position of z_n does.

The drafter's KV cache is argen's slot-indexed cache (accel.families.llamagen.network.KVCache): context
pairs are written at their sequence index; draft-tree nodes after them, visible only to their descendants
through an explicit mask, and overwritten by the next context pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.errors import ArgenError
from accel.families import llamagen as lg
from accel.families.llamagen.network import (KVCache, ModelArgs, RMSNorm, apply_rotary_emb, find_multiple,
                                             precompute_freqs_cis_2d)

EAGLE_NORM_EPS = 1e-6  # the release's drafter config (rms_norm_eps); the target's own norms use 1e-5


@dataclass(frozen=True)
class EagleConfig:
    dim: int
    n_head: int
    intermediate: int
    vocab_size: int
    cls_token_num: int   # the target's condition positions
    block_size: int      # image tokens
    rope_base: float

    @classmethod
    def of_target(cls, args: ModelArgs) -> "EagleConfig":
        """The drafter of a LlamaGen target: its width, heads, SwiGLU size, vocabulary and grid."""
        if args.n_kv_head not in (None, args.n_head):
            raise ArgenError(f"an EAGLE drafter for a target with {args.n_kv_head} KV heads and {args.n_head} "
                             f"query heads: the release's drafter has as many KV heads as query heads")
        hidden = int(2 * (4 * args.dim) / 3)
        if args.ffn_dim_multiplier is not None:
            hidden = int(args.ffn_dim_multiplier * hidden)
        return cls(dim=args.dim, n_head=args.n_head, intermediate=find_multiple(hidden, args.multiple_of),
                   vocab_size=args.vocab_size, cls_token_num=args.cls_token_num, block_size=args.block_size,
                   rope_base=args.rope_base)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def cache_args(self) -> ModelArgs:
        """What KVCache needs to size the drafter's one layer."""
        return ModelArgs(dim=self.dim, n_layer=1, n_head=self.n_head)


class EagleAttention(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        self.n_head, self.head_dim = c.n_head, c.head_dim
        self.q_proj = nn.Linear(c.dim, c.dim, bias=False)
        self.k_proj = nn.Linear(c.dim, c.dim, bias=False)
        self.v_proj = nn.Linear(c.dim, c.dim, bias=False)
        self.o_proj = nn.Linear(c.dim, c.dim, bias=False)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, cache: KVCache | None, slots: torch.Tensor | None,
                mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q = apply_rotary_emb(self.q_proj(x).view(B, T, self.n_head, self.head_dim), freqs).transpose(1, 2)
        k = apply_rotary_emb(self.k_proj(x).view(B, T, self.n_head, self.head_dim), freqs).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(0, slots, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class EagleMLP(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.intermediate, bias=False)
        self.up_proj = nn.Linear(c.dim, c.intermediate, bias=False)
        self.down_proj = nn.Linear(c.intermediate, c.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EagleLayer(nn.Module):
    def __init__(self, c: EagleConfig):
        super().__init__()
        self.self_attn = EagleAttention(c)
        self.mlp = EagleMLP(c)
        self.post_attention_layernorm = RMSNorm(c.dim, eps=EAGLE_NORM_EPS)

    def forward(self, x, freqs, cache=None, slots=None, mask=None):
        x = x + self.self_attn(x, freqs, cache, slots, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class EagleHead(nn.Module):
    """The drafter network (module names = the release's state_dict keys)."""

    def __init__(self, c: EagleConfig):
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.embed_tokens.weight.requires_grad_(False)  # frozen: the target's token embedding
        self.fc = nn.Linear(2 * c.dim, c.dim, bias=True)
        self.layers = nn.ModuleList([EagleLayer(c)])
        grid = int(c.block_size ** 0.5)
        # drafter index s embeds the token of base position s + 1: the target's table shifted by one
        self.freqs_cis = precompute_freqs_cis_2d(grid, c.head_dim, c.rope_base, max(c.cls_token_num - 1, 0))

    def freqs(self, rope_pos: torch.Tensor) -> torch.Tensor:
        if self.freqs_cis.device != rope_pos.device:
            self.freqs_cis = self.freqs_cis.to(rope_pos.device)
        return self.freqs_cis[rope_pos.clamp(max=self.freqs_cis.shape[0] - 1)]

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, rope_pos: torch.Tensor | None = None,
                cache: KVCache | None = None, slots: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted next features [B, T, H] (pass them through the target's `output` for logits).

        Training: feats [B, T, H] and tokens [B, T] from drafter index 0, causal, no cache.
        Drafting: rope_pos [B, T] (the drafter index of each pair, which fixes its RoPE), a cache with
        kv_len set by the caller, slots [B, T] where each pair's key and value are written, and mask
        [B, 1, T, kv_len] (True = visible)."""
        with torch.no_grad():
            emb = self.embed_tokens(tokens)
        x = self.fc(torch.cat([emb.to(feats.dtype), feats], dim=-1))
        if rope_pos is None:
            rope_pos = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)
        freqs = self.freqs(rope_pos)
        for layer in self.layers:
            x = layer(x, freqs, cache, slots, mask)
        return x

    def forward_flops(self, rows: int, n_q: int, n_kv: int) -> float:
        """Analytic FLOPs of one drafting forward, the target's output head included (every drafted position
        is turned into logits)."""
        from accel import flops as F_

        c, n = self.config, rows * n_q
        return (F_.linear(n, 2 * c.dim, c.dim) + 4 * F_.linear(n, c.dim, c.dim) + rows * F_.attention(n_q, n_kv, c.dim)
                + 3 * F_.linear(n, c.dim, c.intermediate) + F_.linear(n, c.dim, c.vocab_size))

    def new_cache(self, rows: int, max_seq: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        return KVCache(self.config.cache_args(), rows, max_seq, dtype, device)


def build_eagle_head(target: lg.Transformer) -> EagleHead:
    """A drafter for `target`, its embedding copied from the target's (frozen), the rest the official init."""
    head = EagleHead(EagleConfig.of_target(target.config)).to(target.output.weight.device)
    with torch.no_grad():
        head.embed_tokens.weight.copy_(target.tok_embeddings.weight)
    return head


def load_eagle_head(target: lg.Transformer, path: str | Path, device: torch.device) -> EagleHead:
    """Released (or argen-trained) drafter weights for `target`, strictly: a missing, unexpected or
    misshapen key is an error naming the file and the keys."""
    from accel.checkpoints import load_strict, read_checkpoint, unwrap_state_dict

    state = unwrap_state_dict(read_checkpoint(str(path), "drafter_checkpoint"), prefer=("model", "state_dict"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    with torch.device("meta"):
        head = EagleHead(EagleConfig.of_target(target.config))
    head = head.to_empty(device="cpu")
    load_strict(head, state, f"EAGLE drafter {path}")
    head.embed_tokens.weight.requires_grad_(False)
    return head.to(device).eval()
