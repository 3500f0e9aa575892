"""LlamaGen's VQ-16 image tokenizer (vq_ds16_c2i.pt), in the official module layout.

A taming-style conv encoder/decoder (ch 128, ch_mult 1,1,2,2,4: four x2 resamplings, so a 256 px image
is a 16x16 grid and 384 px a 24x24 grid), 1x1 convs to and from an 8-dim code space, and a 16384 x 8
codebook. The codebook rows and the encoder outputs are L2-normalised before matching and lookup, so
the codes are matched by cosine similarity; `decode_code` looks up the normalised rows.

`build_tokenizer("llamagen_vq16")` gives the released shape (strict keys, including the
`quantize.codebook_used` usage buffer). Keyword arguments (ch, ch_mult, num_res_blocks, z_channels)
make the narrow random-init tokenizer of the tiny test models.

`build_tokenizer("llamagen_vq_toy")` is argen's own small VQ trained on ToyShapes (`argen train-toy
llamagen-tokenizer`, weights in accel/toy/weights): the same network with two levels (ch_mult 1,2: one
x2 resampling, so a 32x32 image is the official 16x16 code grid), a 1024 x 8 codebook, L2-normalised
as in the release. `VectorQuantizer.quantize_train` is the release's training forward (codebook and
commitment losses, straight-through gradient).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.errors import ArgenError
from accel.generator import seeded_init
from accel.tokenizers.blocks import AttnBlock, Downsample, Normalize, ResnetBlock, Upsample, swish


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, in_channels: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        in_mult = (1,) + tuple(ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_mult[level], ch * ch_mult[level]
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in))
            if level != self.num_resolutions - 1:
                block.downsample = Downsample(block_in)
            self.conv_blocks.append(block)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, block in enumerate(self.conv_blocks):
            for i in range(self.num_res_blocks):
                h = block.res[i](h)
                if len(block.attn) > 0:
                    h = block.attn[i](h)
            if level != self.num_resolutions - 1:
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int, out_channels: int = 3):
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(block_in, block_in), AttnBlock(block_in), ResnetBlock(block_in, block_in)])
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            block = nn.Module()
            block.res, block.attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in))
            if level != 0:
                block.upsample = Upsample(block_in)
            self.conv_blocks.append(block)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for level, block in enumerate(self.conv_blocks):
            for i in range(self.num_res_blocks + 1):
                h = block.res[i](h)
                if len(block.attn) > 0:
                    h = block.attn[i](h)
            if level != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int, l2_norm: bool = True, show_usage: bool = True):
        super().__init__()
        self.n_e, self.e_dim, self.l2_norm = n_e, e_dim, l2_norm
        self.embedding = nn.Embedding(n_e, e_dim)
        if show_usage:  # a training statistic that the release saves; unused here
            self.register_buffer("codebook_used", torch.zeros(65536))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, H, W] -> code indices [B, H*W] (nearest normalised codebook row)."""
        zf = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim)
        if self.l2_norm:
            zf = F.normalize(zf, p=2, dim=-1)
        e = self.codebook()
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(1).view(z.shape[0], -1)

    def quantize_train(self, z: torch.Tensor, beta: float = 0.25):
        """The release's training forward: z [B, C, H, W] -> (z_q with straight-through gradient,
        codebook loss, commitment loss (beta-weighted), indices [B, H*W]). With l2_norm the matching,
        the losses and z_q all live on the unit sphere, as in the release."""
        zf = z.permute(0, 2, 3, 1)
        if self.l2_norm:
            zf = F.normalize(zf, p=2, dim=-1)
        flat = zf.reshape(-1, self.e_dim)
        e = self.codebook()
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        idx = d.argmin(1)
        zq = e[idx].view(zf.shape)
        codebook_loss = torch.mean((zq - zf.detach()) ** 2)
        commit_loss = beta * torch.mean((zq.detach() - zf) ** 2)
        zq = zf + (zq - zf).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), codebook_loss, commit_loss, idx.view(z.shape[0], -1)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """indices [B, h*w] -> [B, C, h, w] (shape = (B, C, h, w))."""
        B, C, h, w = shape
        return self.codebook()[indices].reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, codebook_size: int = 16384, codebook_embed_dim: int = 8, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2, z_channels: int = 256):
        super().__init__()
        self.config_key = (codebook_size, codebook_embed_dim, ch, tuple(ch_mult), num_res_blocks, z_channels)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.config_key[3]) - 1)

    def encode_to_codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, code: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Code indices [B, h*w] -> images [B, 3, d*h, d*w] (d = self.downsample), nominally in [-1, 1]."""
        code = code.long()
        if code.numel() and (int(code.min()) < 0 or int(code.max()) >= self.quantize.n_e):
            raise ArgenError(f"code indices must lie in [0, {self.quantize.n_e}); got values "
                             f"{int(code.min())}..{int(code.max())}")
        return self.decode(self.quantize.get_codebook_entry(code, shape))


# tokenizer name -> VQModel keyword arguments
TOKENIZER_CONFIGS: dict[str, dict] = {
    "llamagen_vq16": {},
    # trained on ToyShapes (accel/toy): downsampling 2, 32x32 images -> 16x16 codes, 1024 x 8 codebook
    "llamagen_vq_toy": {"codebook_size": 1024, "codebook_embed_dim": 8, "ch": 32, "ch_mult": (1, 2),
                        "num_res_blocks": 1, "z_channels": 32},
}


def build_tokenizer(name: str = "llamagen_vq16", **kwargs) -> VQModel:
    if name not in TOKENIZER_CONFIGS:
        raise ArgenError(f"accel.tokenizers.vq builds {sorted(TOKENIZER_CONFIGS)}, not {name!r}")
    return VQModel(**{**TOKENIZER_CONFIGS[name], **kwargs})


def load_tokenizer(checkpoint: str | None, device: torch.device, random_init: bool = False, seed: int = 0,
                   name: str = "llamagen_vq16", **kwargs) -> VQModel:
    """A checkpoint (the released vq_ds16_c2i.pt: strict keys, weights under "model"; or a toy
    safetensors file), or a seeded random init."""
    if checkpoint is not None:
        from accel.checkpoints import load_strict, read_checkpoint, unwrap_state_dict

        with torch.device("meta"):
            vq = build_tokenizer(name, **kwargs)
        vq = vq.to_empty(device="cpu")
        state = unwrap_state_dict(read_checkpoint(checkpoint, "tokenizer_checkpoint"), prefer=("model", "state_dict"))
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 storage -> fp32
        load_strict(vq, state, f"tokenizer checkpoint {checkpoint!r} ({name})")
    else:
        if not random_init:
            hint = ("run `argen train-toy llamagen-tokenizer`" if name == "llamagen_vq_toy"
                    else "pass vq_ds16_c2i.pt (model.tokenizer_checkpoint=...)")
            raise ArgenError(f"{name}: no tokenizer_checkpoint given; {hint} or random_init=True")
        with seeded_init(seed):
            vq = build_tokenizer(name, **kwargs)
            # the official codebook init: uniform(-1/n, 1/n), then unit rows
            n = vq.quantize.n_e
            w = torch.empty_like(vq.quantize.embedding.weight).uniform_(-1.0 / n, 1.0 / n)
            vq.quantize.embedding.weight.data = F.normalize(w, p=2, dim=-1)
    return vq.to(device).eval()
