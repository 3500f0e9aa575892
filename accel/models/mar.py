"""MAR: masked autoregressive image generation with a per-token diffusion head (Li et al., NeurIPS 2024).

State dict layout as in the released `checkpoint-last.pth` of LTH14/mar (timm ViT blocks, `diffloss.net.*`).

The network is an MAE-style encoder/decoder over the 16x16 grid of KL-16 latents (16 channels each):
  encoder: z_proj(all 256 tokens) -> 64 "buffer" tokens holding the class embedding are prepended ->
           + pos, LayerNorm -> only the buffer and the already generated (visible) tokens go through the blocks.
  decoder: decoder_embed -> scattered into a 320-long sequence of mask tokens -> + pos -> blocks -> norm ->
           drop the buffer -> + diffusion pos = z, one condition vector per token.
  head:    a small MLP with adaLN (SimpleMLPAdaLN, accel/models/mar_diffloss.py) denoises each token's 16 latent
           channels given its z, by DDPM on a respaced cosine schedule with learned variance
           (accel/models/mar_diffusion.py).

Sampling (`MAR.sample_tokens`) follows the official loop: one random order per sample, a cosine schedule of
how many tokens stay masked, classifier-free guidance by a second (unconditional, `fake_latent`) branch,
guidance applied to the eps channels only, both branches sharing their starting noise. Randomness comes from
one torch.Generator per sample: its order first, then per step the head's noise.

Accelerations plug in through two cache objects (see accel/methods/lazymar.py), both optional:
  `cache` (transformer): begin_step, runs_uncond, encoder_positions, encoder_layer(i), decoder_base,
      store_decoder_input, decoder_layer(i), decoder_output; a layer hook has keys_values(k, v) and
      after_attention(x).
  `head_cache` (diffusion head): begin(i, num_timesteps), full, skips_block, block_delta, store_block_delta,
      reuse_mlp, store_mlp, store_cfg_delta, cfg_delta.
"""
from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from accel import flops as fl
from accel import registry
from accel.errors import ArgenError
from accel.generator import BaseGenerator, require_weights, seeded_init
from accel.options import check_option_names, option_int, parse_options
from accel.models.mar_diffloss import DiffLoss
from accel.models.mar_diffusion import TRAIN_STEPS, RespacedDDPM, space_timesteps
from accel.sampling import randn_rows

# ----------------------------------------------------------------------------------------------------------
# Configs. Shared by all sizes: 256px, KL-16 latents (16x16 tokens of 16 channels), buffer 64, mlp ratio 4,
# 1000 classes. The diffusion head's depth/width are those of the released checkpoints (README), not the
# argparse defaults of main_mar.py. `cfg` is the paper's guidance scale (256 steps, linear schedule).
# ----------------------------------------------------------------------------------------------------------
_SHARED = dict(img_size=256, vae_stride=16, patch_size=1, vae_embed_dim=16, buffer_size=64, mlp_ratio=4.0,
               class_num=1000, tokenizer="mar_kl16", tokenizer_kwargs={}, latent_scale=0.2325, sampling={})
CONFIGS: dict[str, dict[str, Any]] = {
    "mar_base": dict(_SHARED, encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, decoder_embed_dim=768,
                     decoder_depth=12, decoder_num_heads=12, diffloss_d=6, diffloss_w=1024, cfg=2.9),
    "mar_large": dict(_SHARED, encoder_embed_dim=1024, encoder_depth=16, encoder_num_heads=16,
                      decoder_embed_dim=1024, decoder_depth=16, decoder_num_heads=16, diffloss_d=8, diffloss_w=1280,
                      cfg=3.0),
    "mar_huge": dict(_SHARED, encoder_embed_dim=1280, encoder_depth=20, encoder_num_heads=16,
                     decoder_embed_dim=1280, decoder_depth=20, decoder_num_heads=16, diffloss_d=12, diffloss_w=1536,
                     cfg=3.2),
    # Tests and benchmarks: random weights, official structure and token grid, few narrow layers; a KL-16
    # tokenizer of the same layout with 32 base channels instead of 128 (16 GFLOPs per decode instead of 250).
    "mar_tiny": dict(_SHARED, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64,
                     decoder_depth=6, decoder_num_heads=4, diffloss_d=6, diffloss_w=64, cfg=3.0,
                     tokenizer_kwargs={"ch": 32}),
    # Trained on ToyShapes (10 classes, 32x32 images; `argen train-toy mar-tokenizer`, then `argen train-toy mar`),
    # weights in accel/toy/weights, loaded by default. The official structure: the mar_kl_toy tokenizer (one
    # downsampling) makes a 32x32 image the same 16x16 token grid as kl16 at 256 px, tokens of 4 channels; buffer
    # 64; a 2-layer encoder and 6-layer decoder of width 48 (3 heads); a 6-block head of width 64 (LazyMAR's
    # default head cache skips blocks 1-4). latent_scale None: read from the weights' metadata (measured on the
    # trained tokenizer, as 0.2325 was for kl16). Sampling defaults (cfg 7.0, temperature 0.8; upstream's are
    # 2.9-3.2 and 1.0) chosen with toy FID on 250 samples (docs/BENCHMARKS.md, "MAR toy").
    "mar_toy": dict(_SHARED, img_size=32, vae_stride=2, vae_embed_dim=4, class_num=10, encoder_embed_dim=48,
                    encoder_depth=2, encoder_num_heads=3, decoder_embed_dim=48, decoder_depth=6, decoder_num_heads=3,
                    diffloss_d=6, diffloss_w=64, cfg=7.0, tokenizer="mar_kl_toy", latent_scale=None,
                    sampling=dict(num_sampling_steps=100, temperature=0.8)),
}
LATENT_SCALE = 0.2325  # latents were scaled by this in training; decode(tokens / 0.2325) (config "latent_scale")

# ----------------------------------------------------------------------------------------------------------
# Transformer blocks (timm 0.9 `Block` layout: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2)
# ----------------------------------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, group: str):
        super().__init__()
        self.num_heads, self.group = num_heads, group
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                      # [B, heads, N, head_dim]
        if hook is not None:                         # a cache may extend or replace the keys and values
            k, v = hook.keys_values(k, v)
        x = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        x = x.transpose(1, 2).reshape(B, N, C)
        fl.count(self.group, fl.linear(B * N, C, 3 * C) + fl.attention(B * N, k.shape[2], C) + fl.linear(B * N, C, C))
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, group: str):
        super().__init__()
        self.group = group
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fl.count(self.group, 2 * fl.linear(x.shape[0] * x.shape[1], self.fc1.in_features, self.fc1.out_features))
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, group: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, group)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), group)

    def forward(self, x: torch.Tensor, hook=None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), hook)
        if hook is not None:                         # a cache may keep only some tokens from here on
            x = hook.after_attention(x)
        return x + self.mlp(self.norm2(x))


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

    def forward_mae_encoder(self, x: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor, cache=None):
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
        for i, block in enumerate(self.encoder_blocks):
            x = block(x, cache.encoder_layer(i) if cache is not None else None)
        return self.encoder_norm(x), positions

    def forward_mae_decoder(self, x: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
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
        for i, block in enumerate(self.decoder_blocks):
            x = block(x, cache.decoder_layer(i) if cache is not None else None)
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
                      num_sampling_steps: str | int = "100", cache=None, head_cache=None) -> torch.Tensor:
        """Generate latents [B, 16, 16, 16] (scaled; decode them / 0.2325). labels None = unconditional."""
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
            x, positions = self.forward_mae_encoder(x_tokens, x_mask, class_embedding, cache)
            z = self.forward_mae_decoder(x, positions, cache)  # [2B, L, D] when guided (a cache may synthesise
            z = z[torch.cat([mask_to_pred, mask_to_pred]) if guided else mask_to_pred]  # the second half)

            if cfg_schedule == "linear":  # guidance grows with the number of generated tokens (as in Muse);
                # a 1-element fp32 tensor as upstream's, which under autocast makes the guided eps fp32
                cfg_iter = 1 + (cfg - 1) * (L - torch.tensor([float(mask_len)], device=device)) / L
            else:
                cfg_iter = cfg
            n = int(mask_to_pred[0].sum())
            noise = randn_rows((ddpm.num_timesteps, n, C), generators, device)  # [B, T, n, C]
            noise = noise.permute(1, 0, 2, 3).reshape(ddpm.num_timesteps, bsz * n, C)
            sampled = self.diffloss.sample(z, noise, ddpm, temperature, cfg_iter, guided, head_cache)
            tokens = tokens.clone()
            tokens[mask_to_pred] = sampled.to(tokens.dtype)
            mask = mask_next
        return self.unpatchify(tokens)


def conditions_of(name: str) -> tuple[int | None, bool]:
    """MAR is class-conditional; upstream calls the class count `class_num`."""
    return int(CONFIGS[name]["class_num"]), False


def build_model(name: str) -> MAR:
    if name not in CONFIGS:
        raise ArgenError(f"unknown MAR model {name!r}; known: {sorted(CONFIGS)}")
    return MAR(**network_config(CONFIGS[name]))


# what a config holds besides the network's constructor arguments (a misspelt network key is a TypeError)
NOT_NETWORK = ("tokenizer", "tokenizer_kwargs", "latent_scale", "sampling", "cfg")


def network_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_NETWORK}


def randomize_zero_init(model: MAR) -> None:
    """Random weights for tests and benchmarks: the official init zeroes the head's adaLN and output layers,
    which would make every sample ignore the transformer; give those layers xavier weights instead."""
    net = model.diffloss.net
    for layer in [b.adaLN_modulation[-1] for b in net.res_blocks] + [net.final_layer.adaLN_modulation[-1],
                                                                     net.final_layer.linear]:
        nn.init.xavier_uniform_(layer.weight)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """checkpoint-last.pth -> the EMA weights ("model_ema"), else "model". The training script also
    stores its argparse Namespace under "args"; it is allowed through the weights-only loader."""
    from accel.checkpoints import read_checkpoint, unwrap_state_dict

    with torch.serialization.safe_globals([argparse.Namespace]):
        return unwrap_state_dict(read_checkpoint(path), prefer=("model_ema", "model"))


# ----------------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------------


class MARGenerator(BaseGenerator):
    family = "mar"

    def __init__(self, *, name, accel, model, tokenizer, device, num_iter, cfg, cfg_schedule, temperature,
                 num_sampling_steps, method=None, latent_scale: float = LATENT_SCALE):
        super().__init__(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                         image_size=CONFIGS[name]["img_size"], num_classes=CONFIGS[name]["class_num"])
        self.num_iter, self.cfg, self.cfg_schedule = num_iter, cfg, cfg_schedule
        self.temperature, self.num_sampling_steps = temperature, num_sampling_steps
        self.method = method  # the method's checked settings (new_caches(B), stats(*caches)) or None
        self.latent_scale = latent_scale

    def _sample(self, conditions: list, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        B = len(conditions)
        labels = torch.tensor(conditions, dtype=torch.long, device=self.device)
        caches = self.method.new_caches(B) if self.method is not None else (None, None)
        counter = fl.FlopCounter()
        with fl.counting(counter):
            tokens = self.model.sample_tokens(labels, generators, num_iter=self.num_iter, cfg=self.cfg,
                                              cfg_schedule=self.cfg_schedule, temperature=self.temperature,
                                              num_sampling_steps=self.num_sampling_steps,
                                              cache=caches[0], head_cache=caches[1])
            images = self.tokenizer.decode(tokens / self.latent_scale)
        counter.add("tokenizer", B * vae_decode_flops(self.name, tuple(tokens.shape[1:])))
        counters = counter.per_image(B)
        if self.method is not None:
            counters.update(self.method.stats(*caches))
        return images.float(), counters


def vae_decode_flops(name: str, latent_shape: tuple[int, ...]) -> float:
    """FLOPs of decoding one image, counted once on a copy of the tokenizer built on the meta device."""
    from accel.tokenizers import build_tokenizer

    key = ("mar_vae_decode", CONFIGS[name]["tokenizer"], tuple(sorted(CONFIGS[name]["tokenizer_kwargs"].items())),
           latent_shape)
    if key not in _VAE_FLOPS:
        with torch.device("meta"):
            vae = build_tokenizer(CONFIGS[name]["tokenizer"], **CONFIGS[name]["tokenizer_kwargs"])
        _VAE_FLOPS[key] = fl.measured_flops(key, vae, (1,) + latent_shape, method="decode")
    return _VAE_FLOPS[key]


_VAE_FLOPS: dict[tuple, float] = {}


@dataclass(frozen=True)
class Sampling:
    """MAR's sampling options (main_mar.py's evaluation arguments); a config's `sampling` changes the defaults
    for its model, and `cfg` defaults to the paper's value for the size."""

    num_iter: int = 64
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    num_sampling_steps: int | str = 100
    seed_init: int = 0  # the seed of random_init weights

    def check(self, name: str) -> None:
        seq_len = (CONFIGS[name]["img_size"] // CONFIGS[name]["vae_stride"] // CONFIGS[name]["patch_size"]) ** 2
        option_int("num_iter", self.num_iter, 2, seq_len, hint=f"steps over {name}'s {seq_len} tokens; 64 is "
                                                               f"the default, 256 the paper's setting")
        if not math.isfinite(self.cfg) or self.cfg < 1.0:
            raise ArgenError(f"cfg={self.cfg!r}: expected a guidance scale >= 1 (1 = no guidance; the paper uses "
                             f"2.9 / 3.0 / 3.2 for base / large / huge)")
        if self.cfg_schedule not in ("linear", "constant"):
            raise ArgenError(f"cfg_schedule={self.cfg_schedule!r}: expected 'linear' or 'constant'")
        if not self.temperature > 0:
            raise ArgenError(f"temperature={self.temperature!r}: expected a number > 0 (1.0 with CFG, 0.95 without)")
        try:
            space_timesteps(TRAIN_STEPS, self.num_sampling_steps)
        except (ValueError, TypeError) as e:
            raise ArgenError(f"num_sampling_steps={self.num_sampling_steps!r}: expected a step count from 1 to "
                             f"1000 such as 100 (the default), or 'ddimN' ({e})") from None


SAMPLING_OPTIONS = tuple(f.name for f in fields(Sampling))


def stored_latent_scale(path: str | None, what: str = "tokenizer_checkpoint") -> float | None:
    """The "latent_scale" a toy checkpoint carries in its safetensors metadata (set by argen train-toy)."""
    if path is None or not str(path).endswith(".safetensors") or str(path).startswith("s3://"):
        return None
    from safetensors import safe_open

    from accel.checkpoints import existing_file

    with safe_open(str(existing_file(path, what)), framework="pt") as f:
        value = (f.metadata() or {}).get("latent_scale")
    if value is None:
        return None
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise ArgenError(f"{path}: metadata latent_scale={value!r} is not a positive number; retrain with "
                         f"`argen train-toy mar-tokenizer` (or mar)")
    return scale


def latent_scale_for(name: str, checkpoint: str | None, tokenizer_checkpoint: str | None, random_init: bool) -> float:
    """The factor latents were multiplied by when the model was trained: the model checkpoint's metadata, else
    the tokenizer's, else the config's (0.2325 for kl16). Random toy weights without either use 1.0."""
    for path, what in ((checkpoint, "checkpoint"), (tokenizer_checkpoint, "tokenizer_checkpoint")):
        scale = stored_latent_scale(path, what)
        if scale is not None:
            return scale
    if CONFIGS[name]["latent_scale"] is not None:
        return float(CONFIGS[name]["latent_scale"])
    if random_init:
        return 1.0
    raise ArgenError(f"{name}: neither checkpoint {checkpoint!r} nor tokenizer_checkpoint {tokenizer_checkpoint!r} "
                     f"carries the latent scale factor (safetensors metadata 'latent_scale'); use the files written "
                     f"by `argen train-toy mar-tokenizer` / `argen train-toy mar`, or random_init=True")


def option_names(name: str, accel: str) -> tuple[str, ...]:
    """The options make_generator(name, accel=accel) takes; an accel MAR does not support is refused."""
    method = registry.method(accel, name)
    return SAMPLING_OPTIONS + (method.option_names if method is not None else ())


@dataclass
class MARSettings:
    """What make_generator checks and fills in before it loads weights."""
    config: dict[str, Any]
    sampling: Sampling
    method: Any  # what the method's check returned (new_caches(B) -> (cache, head_cache); stats), or None
    checkpoint: str | None
    tokenizer_checkpoint: str | None


def check_settings(name: str, accel: str, checkpoint: str | None, tokenizer_checkpoint: str | None,
                   random_init: bool, options: dict[str, Any]) -> MARSettings:
    """Every option name and value and the presence of weights, without reading a file or building the model
    (argen generate runs it before Ray starts; the files themselves may live on the workers only)."""
    if name not in CONFIGS:
        raise ArgenError(f"unknown MAR model {name!r}; known: {sorted(CONFIGS)}")
    check_option_names(options, option_names(name, accel), f"{name} with accel={accel}")
    config = CONFIGS[name]
    given = {k: v for k, v in options.items() if k in SAMPLING_OPTIONS}
    sampling = parse_options(Sampling, {"cfg": config["cfg"], **config["sampling"], **given}, f"{name} sampling",
                             name=name)  # a config's own defaults (mar_toy) before the options
    record, method = registry.method(accel, name), None
    if record is not None:  # the method sees the model's config (depths) and whether CFG runs two branches
        method = record.check(name, config=config, guided=sampling.cfg != 1.0,
                              options={k: v for k, v in options.items() if k not in SAMPLING_OPTIONS})
    if not random_init:  # toy models default to their committed weights
        from accel.toy import bundled_weights

        if checkpoint is None and bundled_weights(name) is not None:
            checkpoint = str(bundled_weights(name))
        if tokenizer_checkpoint is None and bundled_weights(config["tokenizer"]) is not None:
            tokenizer_checkpoint = str(bundled_weights(config["tokenizer"]))
    require_weights(name, checkpoint, tokenizer_checkpoint, random_init)
    return MARSettings(config, sampling, method, checkpoint, tokenizer_checkpoint)


def make_generator(name: str, *, accel: str = "none", device: torch.device, checkpoint: str | None = None,
                   tokenizer_checkpoint: str | None = None, random_init: bool = False, **options) -> MARGenerator:
    """Sampling options: num_iter (64), cfg (the paper's value for the size), cfg_schedule ("linear"),
    temperature (1.0), num_sampling_steps (100), seed_init (0: the seed of random_init weights); a config's
    "sampling" dict changes these defaults (mar_toy). Toy models load their committed weights
    (accel/toy/weights) when no checkpoint is given and random_init is false.
    With accel="lazymar", the options of accel.methods.lazymar.LazyMARConfig as well."""
    from accel.tokenizers import build_tokenizer
    from accel.tokenizers.kl_vae import load_kl16

    settings = check_settings(name, accel, checkpoint, tokenizer_checkpoint, random_init, options)
    config, seed = settings.config, settings.sampling.seed_init
    checkpoint, tokenizer_checkpoint = settings.checkpoint, settings.tokenizer_checkpoint
    latent_scale = latent_scale_for(name, checkpoint, tokenizer_checkpoint, random_init)

    with seeded_init(seed):
        model = build_model(name)
        tokenizer = build_tokenizer(config["tokenizer"], **config["tokenizer_kwargs"])
        if random_init:
            randomize_zero_init(model)
    if checkpoint is not None:
        from accel.checkpoints import load_strict

        load_strict(model, read_weights(checkpoint), f"MAR checkpoint {checkpoint}")
    if tokenizer_checkpoint is not None:
        if config["tokenizer_kwargs"]:
            warnings.warn(f"{name} uses a narrowed tokenizer {config['tokenizer_kwargs']}; "
                          f"a released kl16.ckpt will not match it")
        load_kl16(tokenizer, tokenizer_checkpoint)
    model.to(device).eval()
    tokenizer.to(device).eval()
    return MARGenerator(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                        method=settings.method, latent_scale=latent_scale,
                        **{k: v for k, v in asdict(settings.sampling).items() if k != "seed_init"})
