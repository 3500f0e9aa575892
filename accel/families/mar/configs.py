"""MAR's model configs (the released base / large / huge, argen's tiny and toy ones) and sampling options."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from accel.errors import ArgenError
from accel.families.mar.diffusion import TRAIN_STEPS, space_timesteps
from accel.options import option_int

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
                     tokenizer_kwargs={"ch": 32}, sampling=dict(num_iter=64)),  # main_mar.py's default: fast tests
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
                    sampling=dict(num_iter=64, num_sampling_steps=100, temperature=0.8)),
}
LATENT_SCALE = 0.2325  # latents were scaled by this in training; decode(tokens / 0.2325) (config "latent_scale")


# what a config holds besides the network's constructor arguments (a misspelt network key is a TypeError)
NOT_NETWORK = ("tokenizer", "tokenizer_kwargs", "latent_scale", "sampling", "cfg")


def network_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_NETWORK}


@dataclass(frozen=True)
class Sampling:
    """MAR's sampling options (main_mar.py's evaluation arguments) at the README's FID setting (256 steps; the
    argparse default and the demos run 64, "much faster"); a method's paper settings (Method.sampling_defaults)
    and then a config's `sampling` change the defaults, and `cfg` defaults to the paper's value for the size."""

    num_iter: int = 256
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    num_sampling_steps: int | str = 100
    seed_init: int = 0  # the seed of random_init weights

    def check(self, name: str) -> None:
        seq_len = (CONFIGS[name]["img_size"] // CONFIGS[name]["vae_stride"] // CONFIGS[name]["patch_size"]) ** 2
        option_int("num_iter", self.num_iter, 2, seq_len, hint=f"steps over {name}'s {seq_len} tokens; 256 is "
                                                               f"the paper's FID setting, 64 the fast one")
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
