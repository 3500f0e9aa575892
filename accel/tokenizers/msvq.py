"""VAR's multi-scale residual VQVAE (vae_ch160v4096z32.pth), in the official state_dict layout.

Encoder/decoder: the LDM vq-f16 convolutional layout (ch_mult 1,1,2,2,4; two res blocks per level;
self-attention at the lowest resolution and in the middle). The quantizer holds one 4096 x 32
codebook shared by every scale and K=4 "phi" 3x3 convolutions that refine each scale's upsampled
embedding before it is added to the running latent f_hat.

Residual multi-scale coding, coarse to fine: at scale k the residual is area-downsampled to pn x pn and
quantised; the codes' embeddings are upsampled bicubically to the full latent size, passed through
phi, added to f_hat and subtracted from the residual.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.errors import ArgenError
from accel.tokenizers.blocks import Downsample, Normalize, Upsample

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class MSVQConfig:
    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    share_quant_resi: int = 4  # number of phi convolutions shared across the scales
    quant_resi: float = 0.5  # phi(h) = (1 - r) * h + r * conv(h)
    patch_nums: tuple[int, ...] = PATCH_NUMS_256


TOKENIZER_CONFIGS = {
    "var_vqvae": MSVQConfig(),
    # same structure, 5x narrower (GroupNorm needs multiples of 32): for tests and benchmarks on CPU
    "var_vqvae_tiny": MSVQConfig(ch=32),
    # trained on ToyShapes: downsampling 2, so 32x32 images are the official 16x16 latent grid
    "var_vqvae_toy": MSVQConfig(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2), num_res_blocks=1),
}


# ---------------------------------------------------------------------------------------------
# convolutional encoder / decoder (LDM layout)

class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = Normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, qkv from one 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) * C ** -0.5, dim=-1)  # [B, HW(q), HW(k)]
        h = torch.bmm(v, attn.transpose(1, 2)).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Encoder(nn.Module):
    def __init__(self, cfg: MSVQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * m))
                block_in = ch * m
                if level == len(mult) - 1:
                    stage.attn.append(AttnBlock(block_in))
            if level != len(mult) - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: MSVQConfig):
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        stages = []
        for level in reversed(range(len(mult))):  # built coarse to fine, stored fine to coarse (official order)
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in, ch * mult[level]))
                block_in = ch * mult[level]
                if level == len(mult) - 1:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------
# multi-scale quantizer

class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv3x3(h)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, 1, 1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class PhiPartiallyShared(nn.Module):
    """K phi convolutions for all scales: scale si uses the one whose tick is nearest si / (S - 1)."""

    def __init__(self, phis: list[Phi]):
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)
        K = len(phis)
        # the official tick placement: thirds for K == 4, halves otherwise
        self.ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)

    def for_scale(self, si: int, num_scales: int) -> Phi:
        at = si / (num_scales - 1)
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at)))]


class VectorQuantizer2(nn.Module):
    def __init__(self, cfg: MSVQConfig):
        super().__init__()
        self.vocab_size, self.Cvae, self.patch_nums = cfg.vocab_size, cfg.z_channels, cfg.patch_nums
        self.quant_resi = PhiPartiallyShared([Phi(cfg.z_channels, cfg.quant_resi) for _ in range(cfg.share_quant_resi)])
        # training-time usage statistics; stored in the release, unused at inference
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)

    def phi(self, si: int) -> Phi:
        return self.quant_resi.for_scale(si, len(self.patch_nums))

    def nearest_codes(self, z_NC: torch.Tensor) -> torch.Tensor:
        """L2 nearest codebook row for each row of z."""
        w = self.embedding.weight
        d = z_NC.square().sum(1, keepdim=True) + w.square().sum(1) - 2.0 * z_NC @ w.T
        return d.argmin(dim=1)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training: straight-through residual quantisation of f [B, C, H, W].

        Returns f_hat (values of the quantised latent, gradients of f), the VQ loss (codebook + phi
        terms, plus 0.25 x the commitment term, averaged over scales) and the code indices per scale."""
        B, C, H, W = f.shape
        S = len(self.patch_nums)
        f_rest = f.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f.new_zeros(())
        idx_Bl = []
        for si, pn in enumerate(self.patch_nums):
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            idx = self.nearest_codes(rest.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.embedding(idx).transpose(1, 2).reshape(B, C, pn, pn)
            h = self.phi(si)(F.interpolate(h, size=(H, W), mode="bicubic") if si != S - 1 else h)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat, f.detach()) + 0.25 * F.mse_loss(f, f_hat.detach())
            idx_Bl.append(idx)
        return f + (f_hat - f).detach(), loss / S, idx_Bl

    def f_to_idxBl(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Residual quantisation of a latent [B, C, H, W] -> code indices per scale, each [B, pn*pn]."""
        B, C, H, W = f.shape
        f_rest = f.clone()
        out = []
        S = len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            rest = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != S - 1 else f_rest
            idx = self.nearest_codes(rest.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.embedding(idx).transpose(1, 2).reshape(B, C, pn, pn)
            h = self.phi(si)(F.interpolate(h, size=(H, W), mode="bicubic") if si != S - 1 else h)
            f_rest.sub_(h)
            out.append(idx)
        return out

    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of VAR: the area-downsampled running f_hat for scales 2..S, [B, L - 1, C]."""
        B, C, S = idx_Bl[0].shape[0], self.Cvae, len(self.patch_nums)
        H = self.patch_nums[-1]
        f_hat = idx_Bl[0].new_zeros(B, C, H, H, dtype=torch.float32)
        inputs = []
        for si in range(S - 1):
            pn, pn_next = self.patch_nums[si], self.patch_nums[si + 1]
            h = self.embedding(idx_Bl[si]).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat.add_(self.phi(si)(F.interpolate(h, size=(H, H), mode="bicubic")))
            inputs.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
        return torch.cat(inputs, dim=1)

    def next_autoregressive_input(self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add scale si's embedding map to f_hat (in place); return f_hat and the next scale's input map."""
        S, H = len(self.patch_nums), self.patch_nums[-1]
        if si != S - 1:
            f_hat.add_(self.phi(si)(F.interpolate(h_BChw, size=(H, H), mode="bicubic")))
            pn_next = self.patch_nums[si + 1]
            return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
        f_hat.add_(self.phi(si)(h_BChw))
        return f_hat, f_hat


class VQVAE(nn.Module):
    def __init__(self, cfg: MSVQConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.Cvae = cfg.vocab_size, cfg.z_channels
        self.downsample = 2 ** (len(cfg.ch_mult) - 1)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer2(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 3, 1, 1)

    @property
    def image_size(self) -> int:
        return self.cfg.patch_nums[-1] * self.downsample

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent f_hat [B, 32, h, w] -> image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def img_to_idxBl(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Image in [-1, 1] -> code indices per scale."""
        return self.quantize.f_to_idxBl(self.quant_conv(self.encoder(img)))

    def adapt_state_dict(self, state_dict: dict) -> dict:
        """The hit statistics have one row per scale of the schedule the VAE was trained with; the
        release loads under any schedule by keeping this model's own buffer, as upstream does."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = dict(state_dict)
            own = self.quantize.ema_vocab_hit_SV  # freshly built: zeros (or meta, before loading with assign)
            state_dict[key] = torch.zeros(own.shape, dtype=state_dict[key].dtype)
        return state_dict

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return super().load_state_dict(self.adapt_state_dict(state_dict), strict=strict, assign=assign)


def build_tokenizer(name: str, patch_nums: tuple[int, ...] | None = None) -> VQVAE:
    if name not in TOKENIZER_CONFIGS:
        raise ArgenError(f"unknown VAR tokenizer {name!r}; known: {sorted(TOKENIZER_CONFIGS)}")
    cfg = TOKENIZER_CONFIGS[name]
    if patch_nums is not None:
        cfg = MSVQConfig(**{**cfg.__dict__, "patch_nums": tuple(patch_nums)})
    return VQVAE(cfg).eval().requires_grad_(False)
