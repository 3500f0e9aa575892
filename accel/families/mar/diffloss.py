"""MAR's diffusion head (the release's models/diffloss.py): DiffLoss around SimpleMLPAdaLN.

Each token's 16 latent channels are denoised given its condition vector z from the MAR decoder: a small
MLP of residual blocks with adaLN modulation (shift, scale, gate from the timestep embedding + z), a
final adaLN layer predicting eps and the learned variance. Sampling runs the respaced DDPM of
diffusion.py. Module names are the `diffloss.net.*` keys of the released checkpoints.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from accel import flops as fl
from accel.families.mar.diffusion import RespacedDDPM
from accel.families.mar.hooks import HeadCache


# ----------------------------------------------------------------------------------------------------------
# Diffusion head (DiffLoss / SimpleMLPAdaLN)
# ----------------------------------------------------------------------------------------------------------
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        fl.count("head", self.flops(t.shape[0]))
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))

    def flops(self, n: int) -> float:
        w = self.mlp[0].out_features
        return fl.linear(n, self.frequency_embedding_size, w) + fl.linear(n, w, w)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x: torch.Tensor, y: torch.Tensor, cache: HeadCache | None = None, index: int = 0) -> torch.Tensor:
        n = x.shape[0]
        shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(y).chunk(3, dim=-1)
        fl.count("head", self.flops(n, mlp=False))
        h = cache.reuse_mlp(index, n) if cache is not None else None
        if h is None:
            h = self.mlp(modulate(self.in_ln(x), shift_mlp, scale_mlp))
            fl.count("head", self.flops(n) - self.flops(n, mlp=False))
            if cache is not None:
                cache.store_mlp(index, h)
        return x + gate_mlp * h

    def flops(self, n: int, mlp: bool = True) -> float:
        """The adaLN modulation's FLOPs for n rows, plus the MLP's unless a cache reuses it."""
        w = self.in_ln.normalized_shape[0]
        return fl.linear(n, w, 3 * w) + (2 * fl.linear(n, w, w) if mlp else 0.0)


class FinalLayer(nn.Module):
    def __init__(self, model_channels: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(model_channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(model_channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 2 * model_channels))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        fl.count("head", self.flops(x.shape[0]))
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))

    def flops(self, n: int) -> float:
        w = self.linear.in_features
        return fl.linear(n, w, 2 * w) + fl.linear(n, w, self.linear.out_features)


class SimpleMLPAdaLN(nn.Module):
    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int):
        super().__init__()
        self.in_channels, self.model_channels, self.out_channels = in_channels, model_channels, out_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:  # adaLN-zero: every block starts as the identity
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.constant_(layer.weight, 0)
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cache: HeadCache | None = None
                ) -> torch.Tensor:
        """x [N, 16] noisy latents, t [N] timesteps, c [N, D] conditions from the transformer -> [N, 32]."""
        n = x.shape[0]
        fl.count("head", self._input_flops(n))
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for j, block in enumerate(self.res_blocks):
            if cache is not None and cache.skips_block(j):  # reuse the block's last residual update
                x = x + cache.block_delta(j, n)
                continue
            x_in = x
            x = block(x, y, cache, j)
            if cache is not None:
                cache.store_block_delta(j, x, x_in)
        return self.final_layer(x, y)

    def _input_flops(self, n: int) -> float:
        return fl.linear(n, self.in_channels, self.model_channels) + fl.linear(n, self.cond_embed.in_features,
                                                                              self.model_channels)

    def flops(self, n: int) -> float:
        """What forward counts for n rows without a cache (a compiled call counts none)."""
        return (self._input_flops(n) + self.time_embed.flops(n) + sum(b.flops(n) for b in self.res_blocks)
                + self.final_layer.flops(n))


def call_head(net: SimpleMLPAdaLN, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The head network without a cache: what a compiled sampling step compiles."""
    return net(x, t, c)


class DiffLoss(nn.Module):
    """Holds the head network; `sample` runs its DDPM chain for a batch of token conditions."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, target_channels * 2, z_channels, depth)  # eps + variance

    def sample(self, z: torch.Tensor, noise: torch.Tensor, ddpm: RespacedDDPM, temperature: float = 1.0,
               cfg: float | torch.Tensor = 1.0, guided: bool = False, cache: HeadCache | None = None,
               head_call=None) -> torch.Tensor:
        """Denoise one latent per row of z.

        Guided (`guided=True`): z = [z_cond; z_uncond] (2n rows) and the result has n rows (the conditional
        half; upstream returns both halves, which are equal). The head runs on [x; x] and the guided eps
        uncond + cfg * (cond - uncond) replaces the eps channels; the variance channels are the conditional ones.
        noise [num_timesteps, n, 16]: noise[0] is x_T, noise[k] the fresh noise of step k.
        head_call: a compiled call_head (no cache), or None.
        """
        C = self.in_channels

        def net(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            if head_call is None:
                return self.net(x, t, c, cache)
            fl.count("head", self.net.flops(x.shape[0]))
            return head_call(self.net, x, t, c)

        def model(x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if cache is not None:
                cache.begin(i, ddpm.num_timesteps)
            if not guided:
                return net(x, t, z)
            n = x.shape[0]
            if cache is None or cache.full:
                out = net(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), z)
                cond_eps, uncond_eps = out[:n, :C], out[n:, :C]
                if cache is not None:
                    cache.store_cfg_delta(cond_eps - uncond_eps)
                rest = out[:n, C:]
            else:  # head condition cache: the unconditional eps from the last full timestep's difference
                out = net(x, t, z[:n])
                cond_eps, rest = out[:, :C], out[:, C:]
                uncond_eps = cond_eps - cache.cfg_delta
            half_eps = uncond_eps + cfg * (cond_eps - uncond_eps)
            return torch.cat([half_eps, rest], dim=1)

        return ddpm.p_sample_loop(model, noise, temperature)
