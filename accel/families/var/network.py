"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., NeurIPS 2024).

The network keeps the state_dict layout of FoundationVision/VAR (var_d16.pth ... var_d36.pth), so the
released files load unchanged. Width C = 64 * depth, heads = depth, FFN 4C, AdaLN conditioning on the
class embedding, q/k L2-normalised attention with a learned per-head scale.

Sampling (`VAR.autoregressive_infer_cfg`) follows the official loop: the batch is doubled for CFG
(the second half conditions on the null class), every block appends the current scale's keys and
values to its KV cache so scale k attends to all tokens of scales <= k, the guidance weight ramps
linearly from 0 at the first scale to `cfg` at the last, logits are filtered by top-k then top-p,
and the sampled codes update the running latent f_hat (bicubic upsampling, phi, area downsampling
for the next scale's input). Randomness comes from one torch.Generator per sample.

Accelerations plug in through the token hooks of hooks.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel import flops as F_
from accel.families.var.configs import VARConfig
from accel.families.var.hooks import TokenHook, TokenHooks
from accel.sampling import draw_rows


def call_block(block: nn.Module, x: torch.Tensor, cond: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One block of the release's sampling loop: what a compiled decoding step compiles (one graph per scale)."""
    return block(x, cond, cache)


class KVCache:
    """Keys and values of every token a block has seen so far (all previous scales), appended per scale."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v


# ---------------------------------------------------------------------------------------------
# network

class SelfAttention(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        C, H = cfg.C, cfg.heads
        self.num_heads, self.head_dim = H, C // H
        self.attn_l2_norm = cfg.attn_l2_norm
        if self.attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, H, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))  # keys carry no bias
        self.proj = nn.Linear(C, C)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, attn_bias: torch.Tensor | None = None
                ) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, hd]
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        mask = None if attn_bias is None else attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        F_.count("transformer", self.flops(B * L, k.shape[2]))
        return self.proj(out.transpose(1, 2).reshape(B, L, C))

    def flops(self, n_q: int, n_kv: int) -> float:
        C = self.proj.in_features
        return F_.linear(n_q, C, 3 * C) + F_.attention(n_q, n_kv, C) + F_.linear(n_q, C, C)


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F_.count("transformer", self.flops(x.shape[0] * x.shape[1]))
        return self.fc2(self.act(self.fc1(x)))

    def flops(self, n: int) -> float:
        return F_.linear(n, self.fc1.in_features, self.fc1.out_features) + F_.linear(n, self.fc2.in_features,
                                                                                   self.fc2.out_features)


class AdaLNSelfAttn(nn.Module):
    """x += g1 * Attn(LN(x)(1 + s1) + b1);  x += g2 * FFN(LN(x)(1 + s2) + b2), LN without affine."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        C = cfg.C
        self.C, self.shared_aln = C, cfg.shared_aln
        self.attn = SelfAttention(cfg)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, kv_cache: KVCache | None = None,
                attn_bias: torch.Tensor | None = None, tokens: TokenHook | None = None) -> torch.Tensor:
        if self.shared_aln:  # cond_BD is already shared_ada_lin(cond): [rows, 1, 6, C]
            g1, g2, s1, s2, b1, b2 = (self.ada_gss + cond_BD).unbind(2)
        else:
            g1, g2, s1, s2, b1, b2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)

        def attn(t: torch.Tensor) -> torch.Tensor:
            return self.attn(self.ln_wo_grad(t).mul(s1.add(1)).add_(b1), kv_cache, attn_bias).mul_(g1)

        def ffn(t: torch.Tensor) -> torch.Tensor:
            return self.ffn(self.ln_wo_grad(t).mul(s2.add(1)).add_(b2)).mul(g2)

        if tokens is None:
            x = x + attn(x)
            return x + ffn(x)
        x = x + tokens.branch("attn", x, attn)
        return x + tokens.branch("ffn", x, ffn)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return super().forward(cond_BD).view(-1, 1, 6, self.out_features // 6)


class VAR(nn.Module):
    def __init__(self, cfg: VARConfig):
        super().__init__()
        self.cfg = cfg
        C, pns = cfg.C, cfg.patch_nums
        self.patch_nums, self.L, self.first_l = pns, cfg.L, pns[0] ** 2
        self.num_classes, self.Cvae = cfg.num_classes, cfg.Cvae
        self.begin_ends = []
        cur = 0
        for pn in pns:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn

        self.word_embed = nn.Linear(cfg.Cvae, C)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, C)  # id num_classes is the null class (CFG)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, self.L, C))  # one learned map per scale, concatenated
        self.lvl_embed = nn.Embedding(len(pns), C)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(cfg) for _ in range(cfg.depth)])
        self.register_buffer("lvl_1L", torch.zeros(1, self.L, dtype=torch.long))
        self.register_buffer("attn_bias_for_masking", torch.zeros(1, 1, self.L, self.L))
        self.init_buffers()
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, cfg.vocab_size)

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Scale index of every token, and the block-causal mask: a token sees all tokens of scales <= its own."""
        d = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        self.lvl_1L.copy_(d[:, :, 0])
        self.attn_bias_for_masking.copy_(torch.where(d >= d.transpose(1, 2), 0.0, -torch.inf).view(1, 1, self.L, self.L))
        for b in self.blocks:
            b.attn.zero_k_bias.zero_()

    @torch.no_grad()
    def init_random_weights(self, gates: str = "one") -> None:
        """Random weights (truncated normal, std sqrt(1/3C), as upstream). gates="one" (tests, benchmarks):
        the AdaLN gates start near 1, so that every block changes the output; gates="training": upstream's
        training init (gates ~1e-5 x, modulations 0.5 x, head 0.02 x)."""
        std = math.sqrt(1 / self.cfg.C / 3)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(0.02 / std)
        C = self.cfg.C
        for b in self.blocks:
            b.attn.scale_mul_1H11.fill_(math.log(4.0)) if b.attn.attn_l2_norm else None
            b.attn.q_bias.zero_()
            b.attn.v_bias.zero_()
            if gates == "training":
                b.attn.proj.weight.div_(math.sqrt(2 * self.cfg.depth))
                b.ffn.fc2.weight.div_(math.sqrt(2 * self.cfg.depth))
            if self.cfg.shared_aln:
                b.ada_gss.normal_().div_(C ** 0.5)
                if gates == "training":
                    b.ada_gss[:, :, 2:].mul_(0.5)
                    b.ada_gss[:, :, :2].mul_(1e-5)
                else:
                    b.ada_gss[:, :, :2].add_(1.0)
            elif gates == "training":
                b.ada_lin[1].weight[2 * C:].mul_(0.5)
                b.ada_lin[1].weight[: 2 * C].mul_(1e-5)
            else:
                b.ada_lin[1].bias[: 2 * C].fill_(1.0)
        if gates == "training":
            self.head_nm.ada_lin[1].weight.mul_(0.5)
        self.init_buffers()

    def scale_flops(self, rows: int, n_q: int, kv_len: int) -> float:
        """What the blocks count for `rows` maps of n_q tokens attending to kv_len tokens, without token hooks
        (a compiled block call counts none)."""
        n = rows * n_q
        return sum(b.attn.flops(n, kv_len) + b.ffn.flops(n) for b in self.blocks)

    def get_logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        F_.count("head", F_.linear(h.shape[0] * h.shape[1], self.cfg.C, self.cfg.vocab_size))
        return self.head(self.head_nm(h.float(), cond_BD).float()).float()

    def forward(self, label_B: torch.Tensor, x_BLCv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over all L tokens with the block-causal mask -> logits [B, L, V] (no label dropout)."""
        B = x_BLCv_wo_first_l.shape[0]
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        x = x + self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC
        cond = self.shared_ada_lin(cond_BD)
        for b in self.blocks:
            x = b(x, cond, attn_bias=self.attn_bias_for_masking)
        return self.get_logits(x, cond_BD)

    @torch.no_grad()
    def autoregressive_infer_cfg(self, quant, label_B: torch.Tensor, generators: list[torch.Generator],
                                 cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                                 draw: str = "argen", token_hooks: TokenHooks | None = None,
                                 num_scales: int | None = None, record: dict | None = None,
                                 block_call=None) -> torch.Tensor:
        """Sample B images' latents f_hat [B, Cvae, H, W] by next-scale prediction with CFG.

        draw: "argen" (one uniform per token) or "release" (torch.multinomial, the release's tokens for a seed
        at batch 1); accel.sampling.draw_rows.
        token_hooks: the method's hooks for this call (TokenHooks), or None for the release's loop.
        num_scales: run only the first num_scales scales (f_hat then holds their sum). FLOPs are counted into
        the scope of accel.flops.counting, where one is open.
        record: if given, receives per scale the sampled code indices ("idx_Bl"), the CFG logits ("logits")
        and every block's KV-cache length ("kv_len").
        block_call: runs one block, block_call(block, x, cond, cache) (accel.compiled.CompiledForward of
        call_block: one graph per scale, shared by all blocks), or None for eager. Not with token_hooks.
        """
        if block_call is not None and token_hooks is not None:
            raise ValueError("a compiled block runs the release's loop; token hooks need the eager blocks")
        B, S = label_B.shape[0], len(self.patch_nums)
        num_scales = S if num_scales is None else num_scales
        sos = cond_BD = self.class_emb(torch.cat((label_B, torch.full_like(label_B, self.num_classes))))
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC
        next_map = (sos.unsqueeze(1).expand(2 * B, self.first_l, -1) + self.pos_start.expand(2 * B, self.first_l, -1)
                    + lvl_pos[:, : self.first_l])
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        caches = [KVCache() for _ in self.blocks]
        cond = self.shared_ada_lin(cond_BD)
        cur_L = 0
        for si, pn in enumerate(self.patch_nums[:num_scales]):
            ratio = si / (S - 1)
            cur_L += pn * pn
            hooks = token_hooks.begin_scale(si, pn) if token_hooks is not None else None
            x = next_map
            for i, b in enumerate(self.blocks):
                if block_call is None:
                    x = b(x, cond, caches[i], tokens=hooks.block(i) if hooks is not None else None)
                else:
                    x = block_call(b, x, cond, caches[i])
            if block_call is not None:  # a compiled graph runs none of the modules' FLOP counts
                F_.count("transformer", self.scale_flops(2 * B, pn * pn, cur_L))
            logits = self.get_logits(x, cond_BD)
            t = cfg * ratio  # guidance ramps from 0 at the first scale to cfg at the last
            logits = (1 + t) * logits[:B] - t * logits[B:]
            filtered = filter_top_k_top_p(logits, top_k=top_k, top_p=top_p)
            idx_Bl = draw_rows(filtered.softmax(dim=-1), generators, draw=draw)
            if record is not None:
                record.setdefault("idx_Bl", []).append(idx_Bl)
                record.setdefault("logits", []).append(logits)
                record.setdefault("kv_len", []).append([c.k.shape[2] for c in caches])
            if not more_smooth:
                h = quant.embedding(idx_Bl)  # [B, l, Cvae]
            else:  # visualisation only (never for FID): a Gumbel-softmax mixture of the codebook rows that
                # survived top-k / top-p (upstream filters its logits in place before mixing)
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                h = gumbel_softmax_rows(filtered.mul(1 + ratio), tau, generators) @ quant.embedding.weight.unsqueeze(0)
            h = h.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
            f_hat, next_in = quant.next_autoregressive_input(si, f_hat, h)
            if si != S - 1:
                pn_next = self.patch_nums[si + 1]
                next_map = self.word_embed(next_in.view(B, self.Cvae, -1).transpose(1, 2))
                F_.count("transformer", F_.linear(2 * B * pn_next ** 2, self.Cvae, self.cfg.C))
                next_map = (next_map + lvl_pos[:, cur_L: cur_L + pn_next ** 2]).repeat(2, 1, 1)
        return f_hat


# ---------------------------------------------------------------------------------------------
# sampling

def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """VAR's filter: top-k, then top-p over the ascending sort, always keeping the best token; the dropped
    logits become -inf (a copy: the caller's logits stay as they were)."""
    logits = logits.clone()
    V = logits.shape[-1]
    if 0 < top_k < V:
        kth = logits.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits.masked_fill_(logits < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
        drop_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits.masked_fill_(drop_sorted.scatter(-1, sorted_idx, drop_sorted), -torch.inf)
    return logits


def gumbel_softmax_rows(logits: torch.Tensor, tau: float, generators: list[torch.Generator]) -> torch.Tensor:
    gumbels = torch.stack([-torch.empty_like(logits[b]).exponential_(generator=g).log()
                           for b, g in enumerate(generators)])
    return ((logits + gumbels) / tau).softmax(dim=-1)
