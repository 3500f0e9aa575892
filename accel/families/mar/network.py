"""MAR: masked autoregressive image generation with a per-token diffusion head (Li et al., NeurIPS 2024).

State dict layout as in the released `checkpoint-last.pth` of LTH14/mar (timm ViT blocks, `diffloss.net.*`).

The network is an MAE-style encoder/decoder over the 16x16 grid of KL-16 latents (16 channels each):
  encoder: z_proj(all 256 tokens) -> 64 "buffer" tokens holding the class embedding are prepended ->
           + pos, LayerNorm -> only the buffer and the already generated (visible) tokens go through the blocks.
  decoder: decoder_embed -> scattered into a 320-long sequence of mask tokens -> + pos -> blocks -> norm ->
           drop the buffer -> + diffusion pos = z, one condition vector per token.
  head:    a small MLP with adaLN (SimpleMLPAdaLN, diffloss.py) denoises each token's 16 latent
           channels given its z, by DDPM on a respaced cosine schedule with learned variance
           (diffusion.py).

Sampling (`MAR.sample_tokens`) follows the official loop: one random order per sample, a cosine schedule of
how many tokens stay masked, classifier-free guidance by a second (unconditional, `fake_latent`) branch,
guidance applied to the eps channels only, both branches sharing their starting noise. Randomness comes from
one torch.Generator per sample: its order first, then per step the head's noise.

Accelerations plug in through two optional cache objects declared in hooks.py: a transformer cache and
a diffusion-head cache.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from accel import flops as fl
from accel.families.mar.diffloss import DiffLoss
from accel.families.mar.diffusion import RespacedDDPM
from accel.families.mar.hooks import HeadCache, LayerHook, TransformerCache
from accel.sampling import randn_rows


# ----------------------------------------------------------------------------------------------------------
# Transformer blocks (timm 0.9 `Block` layout: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)
# ----------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, group: str):
        super().__init__()
        self.num_heads, self.group = num_heads, group
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, hook: LayerHook | None = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                      # [B, heads, N, head_dim]
        if hook is not None:                         # a cache may extend or replace the keys and values
            k, v = hook.keys_values(k, v)
        x = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        x = x.transpose(1, 2).reshape(B, N, C)
        fl.count(self.group, self.flops(B * N, k.shape[2]))
        return self.proj(x)

    def flops(self, n_q: int, n_kv: int) -> float:
        C = self.proj.in_features
        return fl.linear(n_q, C, 3 * C) + fl.attention(n_q, n_kv, C) + fl.linear(n_q, C, C)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, group: str):
        super().__init__()
        self.group = group
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fl.count(self.group, self.flops(x.shape[0] * x.shape[1]))
        return self.fc2(F.gelu(self.fc1(x)))

    def flops(self, n: int) -> float:
        return 2 * fl.linear(n, self.fc1.in_features, self.fc1.out_features)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, group: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, group)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), group)

    def forward(self, x: torch.Tensor, hook: LayerHook | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hook)
        if hook is not None:                         # a cache may keep only some tokens from here on
            x = hook.after_attention(x)
        return x + self.mlp(self.norm2(x))

    def flops(self, batch: int, n: int) -> float:
        """What forward counts for `batch` sequences of n tokens without a hook (a compiled call counts none)."""
        return self.attn.flops(batch * n, n) + self.mlp.flops(batch * n)


def call_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """One block of the release's sampling loop: what a compiled sampling step compiles."""
    return block(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, layer_hook=None, block_call=None) -> torch.Tensor:
    """The blocks in order; block_call (a compiled call_block) when given, else each block with its hook
    (layer_hook(i), a cache's), if any."""
    for i, block in enumerate(blocks):
        if block_call is None:
            x = block(x, layer_hook(i) if layer_hook is not None else None)
        else:
            x = block_call(block, x)
            fl.count(block.attn.group, block.flops(x.shape[0], x.shape[1]))
    return x


# ----------------------------------------------------------------------------------------------------------
# MAR
# ----------------------------------------------------------------------------------------------------------
class MAR(nn.Module):
    def __init__(self, img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=1024, encoder_depth=16,
                 encoder_num_heads=16, decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16, mlp_ratio=4.0,
                 vae_embed_dim=16, class_num=1000, buffer_size=64, diffloss_d=3, diffloss_w=1024):
        super().__init__()
        self.vae_embed_dim, self.patch_size = vae_embed_dim, patch_size
        self.seq_h = self.seq_w = img_size // vae_stride // patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.token_embed_dim = vae_embed_dim * patch_size ** 2
        self.num_classes, self.buffer_size = class_num, buffer_size

        self.class_emb = nn.Embedding(class_num, encoder_embed_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, encoder_embed_dim))  # the learned "no class" for CFG

        self.z_proj = nn.Linear(self.token_embed_dim, encoder_embed_dim)
        self.z_proj_ln = nn.LayerNorm(encoder_embed_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, encoder_embed_dim))
        self.encoder_blocks = nn.ModuleList([Block(encoder_embed_dim, encoder_num_heads, mlp_ratio, "encoder")
                                             for _ in range(encoder_depth)])
        self.encoder_norm = nn.LayerNorm(encoder_embed_dim, eps=1e-6)

        self.decoder_embed = nn.Linear(encoder_embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, "decoder")
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, decoder_embed_dim))
        self.initialize_weights()

        self.diffloss = DiffLoss(self.token_embed_dim, decoder_embed_dim, diffloss_d, diffloss_w)
        self._ddpm: dict[tuple, RespacedDDPM] = {}

    def initialize_weights(self) -> None:
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """tokens [B, h*w, c*p*p] -> latents [B, c, h*p, w*p]."""
        B, p, c = x.shape[0], self.patch_size, self.vae_embed_dim
        x = x.reshape(B, self.seq_h, self.seq_w, c, p, p)
        x = torch.einsum("nhwcpq->nchpwq", x)
        return x.reshape(B, c, self.seq_h * p, self.seq_w * p)

    def forward_mae_encoder(self, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor,
                            cache: TransformerCache | None = None, block_call=None):
        """x [B, 256, 16] tokens, mask [B, 256] bool (True = not generated yet), class_embedding [B, D].

        Returns the encoded tokens [B, n, D] and their places [B, n] in the 320-long buffer+token sequence.
        """
        x = self.z_proj(x)
        B, L, D = x.shape
        fl.count("embed", fl.linear(B * L, self.token_embed_dim, D))
        buffer = class_embedding.to(x.dtype).unsqueeze(1).expand(B, self.buffer_size, D)  # every buffer slot
        x = torch.cat([buffer, x], dim=1) + self.encoder_pos_embed_learned
        x = self.z_proj_ln(x)
        mask_with_buffer = torch.cat([mask.new_zeros(B, self.buffer_size), mask], dim=1)
        positions = (~mask_with_buffer).nonzero(as_tuple=True)[1].reshape(B, -1)  # buffer + visible, in order
        if cache is not None:
            positions = cache.encoder_positions(positions)
        x = x.gather(1, positions.unsqueeze(-1).expand(-1, -1, D))
        x = run_blocks(self.encoder_blocks, x, cache.encoder_layer if cache is not None else None, block_call)
        return self.encoder_norm(x), positions

    def forward_mae_decoder(self, x: torch.Tensor, positions: torch.Tensor, cache: TransformerCache | None = None,
                            block_call=None) -> torch.Tensor:
        """Encoded tokens at `positions` -> z [B', 256, D_dec], the head's condition for every token."""
        B, n, _ = x.shape
        x = self.decoder_embed(x)
        D = x.shape[-1]
        fl.count("embed", fl.linear(B * n, self.decoder_embed.in_features, D))
        pos = self.decoder_pos_embed_learned.expand(B, -1, -1)
        index = positions.unsqueeze(-1).expand(-1, -1, D)
        base = self.mask_token.to(x.dtype) + pos              # mask tokens everywhere ...
        if cache is not None:
            base = cache.decoder_base(base)
        x = base.scatter(1, index, x + pos.gather(1, index))  # ... except where the encoder has tokens
        if cache is not None:
            cache.store_decoder_input(x)
        x = run_blocks(self.decoder_blocks, x, cache.decoder_layer if cache is not None else None, block_call)
        if cache is not None:
            x = cache.decoder_output(x)
        x = self.decoder_norm(x)
        return x[:, self.buffer_size:] + self.diffusion_pos_embed_learned

    def ddpm(self, num_sampling_steps: str | int, device: torch.device) -> RespacedDDPM:
        key = (str(num_sampling_steps), str(device))
        if key not in self._ddpm:
            self._ddpm[key] = RespacedDDPM(num_sampling_steps, device)
        return self._ddpm[key]

    @torch.no_grad()
    def sample_tokens(self, labels: torch.Tensor | None, generators: list[torch.Generator], num_iter: int = 64,
                      cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0,
                      num_sampling_steps: str | int = "100", cache: TransformerCache | None = None,
                      head_cache: HeadCache | None = None, block_call=None, head_call=None) -> torch.Tensor:
        """Generate latents [B, 16, 16, 16] (scaled; decode them / 0.2325). labels None = unconditional.

        block_call / head_call: compiled calls (accel.compiled.CompiledForward of call_block and of
        diffloss.call_head), or None for eager; not with the caches."""
        if (block_call is not None or head_call is not None) and (cache is not None or head_cache is not None):
            raise ValueError("compiled calls run the release's loop; the caches need the eager modules")
        bsz, L, C = len(generators), self.seq_len, self.token_embed_dim
        device = self.fake_latent.device
        ddpm = self.ddpm(num_sampling_steps, device)
        guided = cfg != 1.0
        mask = torch.ones(bsz, L, dtype=torch.bool, device=device)
        tokens = torch.zeros(bsz, L, C, device=device)
        orders = torch.stack([torch.randperm(L, generator=g, device=device) for g in generators])
        rows = torch.arange(bsz, device=device).unsqueeze(1)

        for step in range(num_iter):
            # how many tokens stay masked after this step: cosine schedule, at least one left and one predicted
            mask_len = int(np.floor(L * np.cos(math.pi / 2.0 * (step + 1) / num_iter)))
            mask_len = max(1, min(int(mask[0].sum()) - 1, mask_len))
            mask_next = torch.zeros_like(mask)
            mask_next[rows, orders[:, :mask_len]] = True      # the first mask_len of each order stay masked
            mask_to_pred = mask if step >= num_iter - 1 else mask & ~mask_next

            if cache is not None:
                cache.begin_step(step, num_iter, mask, mask_to_pred)
            class_embedding = self.class_emb(labels) if labels is not None else self.fake_latent.expand(bsz, -1)
            x_tokens, x_mask = tokens, mask
            if guided and (cache is None or cache.runs_uncond()):
                x_tokens, x_mask = torch.cat([tokens, tokens]), torch.cat([mask, mask])
                class_embedding = torch.cat([class_embedding, self.fake_latent.expand(bsz, -1)])
            x, positions = self.forward_mae_encoder(x_tokens, x_mask, class_embedding, cache, block_call)
            # z [2B, L, D] when guided (a cache may synthesise the second half)
            z = self.forward_mae_decoder(x, positions, cache, block_call)
            z = z[torch.cat([mask_to_pred, mask_to_pred]) if guided else mask_to_pred]

            if cfg_schedule == "linear":  # guidance grows with the number of generated tokens (as in Muse);
                # a 1-element fp32 tensor as upstream's, which under autocast makes the guided eps fp32
                cfg_iter = 1 + (cfg - 1) * (L - torch.tensor([float(mask_len)], device=device)) / L
            else:
                cfg_iter = cfg
            n = int(mask_to_pred[0].sum())
            noise = randn_rows((ddpm.num_timesteps, n, C), generators, device)  # [B, T, n, C]
            noise = noise.permute(1, 0, 2, 3).reshape(ddpm.num_timesteps, bsz * n, C)
            sampled = self.diffloss.sample(z, noise, ddpm, temperature, cfg_iter, guided, head_cache, head_call)
            tokens = tokens.clone()
            tokens[mask_to_pred] = sampled.to(tokens.dtype)
            mask = mask_next
        return self.unpatchify(tokens)
