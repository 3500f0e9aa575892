"""MAR's KL-16 autoencoder (`mar_kl16`): an LDM-style KL VAE retrained by the MAR authors on ImageNet.

Layout as in the released `kl16.ckpt` (its weights sit under the file's "model" key):
  encoder.{conv_in, down.{l}.block.{b}, down.4.attn.{b}, down.{l}.downsample.conv, mid.{block_1, attn_1, block_2},
           norm_out, conv_out}
  decoder.{conv_in, mid.*, up.{l}.block.{b}, up.{l}.upsample.conv, norm_out, conv_out}
  quant_conv, post_quant_conv
ch=128, ch_mult=(1, 1, 2, 2, 4) -> 4 downsamplings (stride 16), 2 res blocks per level (3 when going up),
16 latent channels (32 moments). The encoder attends at 16x16 (and in its middle); the decoder only in its
middle. MAR samples latents scaled by 0.2325, so images are `decode(tokens / 0.2325)`, in [-1, 1].
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from accel.tokenizers.blocks import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, swish

LATENT_SCALE = 0.2325  # 1 / std of the ImageNet latents; no mean shift
CONFIGS = {
    "mar_kl16": dict(embed_dim=16, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, resolution=256),
    # trained on ToyShapes (`argen train-toy mar-tokenizer`, weights in accel/toy/weights): the same layout with
    # one downsampling (32x32 images -> a 16x16 latent grid, as kl16 gives at 256 px), 4 latent channels, 32/64
    # channels, one res block per level; the encoder attends at 16x16 like kl16's. Its latent scale factor (kl16's
    # is 0.2325) is measured after training and stored in the weights' metadata ("latent_scale").
    "mar_kl_toy": dict(embed_dim=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32),
}


class Encoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, resolution: int, z_channels: int,
                 attn_resolutions: tuple[int, ...] = (16,), in_channels: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_ch_mult = (1,) + tuple(ch_mult)
        res = resolution
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[level]
            for _ in range(num_res_blocks):
                down.block.append(ResnetBlock(block_in, ch * ch_mult[level]))
                block_in = ch * ch_mult[level]
                if res in attn_resolutions:
                    down.attn.append(AttnBlock(block_in))
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels, 3, 1, 1)  # mean and log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, down in enumerate(self.down):
            for i, block in enumerate(down.block):
                h = block(h)
                if len(down.attn) > 0:
                    h = down.attn[i](h)
            if level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, *, ch: int, ch_mult: tuple[int, ...], num_res_blocks: int, resolution: int, z_channels: int,
                 out_ch: int = 3):
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        ups = []
        for level in reversed(range(self.num_resolutions)):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()  # no attention when going up
            for _ in range(num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, ch * ch_mult[level]))
                block_in = ch * ch_mult[level]
            if level != 0:
                up.upsample = Upsample(block_in)
            ups.insert(0, up)  # up[0] is the full-resolution level
        self.up = nn.ModuleList(ups)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(range(self.num_resolutions)):
            for block in self.up[level].block:
                h = block(h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, embed_dim: int = 16, ch: int = 128, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, resolution: int = 256):
        super().__init__()
        kw = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, resolution=resolution, z_channels=embed_dim)
        self.encoder = Encoder(**kw)
        self.decoder = Decoder(**kw)
        self.quant_conv = nn.Conv2d(2 * embed_dim, 2 * embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, embed_dim, 1)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [-1, 1] [B, 3, H, W] -> (mean, std) of the posterior over unscaled latents [B, 16, H/16, W/16]."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """unscaled latents [B, 16, h, w] -> images [B, 3, 16h, 16w], nominally in [-1, 1] (not clamped)."""
        return self.decoder(self.post_quant_conv(z))


def build_tokenizer(name: str = "mar_kl16", **overrides) -> AutoencoderKL:
    """The KL-16 VAE; `overrides` (e.g. ch=32) give narrower test variants with the same layout."""
    from accel.errors import ArgenError

    if name not in CONFIGS:
        raise ArgenError(f"unknown KL tokenizer {name!r}; known: {sorted(CONFIGS)}")
    return AutoencoderKL(**{**CONFIGS[name], **overrides})


# Weights in an LDM training checkpoint that are not part of the autoencoder (perceptual / GAN loss).
TRAINING_ONLY_PREFIXES = ("loss.",)


def load_kl16(vae: AutoencoderKL, path: str) -> None:
    """Load kl16.ckpt strictly. The file holds {"model": state_dict} (upstream reads ["model"]); loss
    weights of an LDM training checkpoint, if present, are dropped with a warning; every other key must match."""
    from accel.checkpoints import load_strict, read_checkpoint, unwrap_state_dict

    state = unwrap_state_dict(read_checkpoint(path, "tokenizer_checkpoint"), prefer=("model", "state_dict"))
    dropped = [k for k in state if k.startswith(TRAINING_ONLY_PREFIXES)]
    if dropped:
        warnings.warn(f"{path}: ignoring {len(dropped)} training-only keys ({', '.join(dropped[:3])}, ...)")
        state = {k: v for k, v in state.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    load_strict(vae, state, f"KL-16 tokenizer checkpoint {path}")
