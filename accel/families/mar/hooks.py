"""The hooks MAR's sampler offers an acceleration, all optional: a transformer cache (which tokens the encoder
and decoder compute at a step, and what they reuse) and a diffusion-head cache (what the head reuses between
DDPM timesteps). `MAR.sample_tokens(..., cache=..., head_cache=...)` calls them; accel/methods/lazymar.py
provides both. Without them the sampler is the release's loop.
"""
from __future__ import annotations

from typing import Protocol

import torch


class LayerHook(Protocol):
    """One transformer block at one step: its attention's keys and values, and the tokens kept after it."""

    def keys_values(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def after_attention(self, x: torch.Tensor) -> torch.Tensor: ...


class TransformerCache(Protocol):
    """The encoder/decoder of one generate() call, step by step."""

    def begin_step(self, step: int, num_iter: int, mask: torch.Tensor, mask_to_pred: torch.Tensor) -> None: ...

    def runs_uncond(self) -> bool: ...  # whether this step runs the unconditional CFG branch

    def encoder_positions(self, positions: torch.Tensor) -> torch.Tensor: ...

    def encoder_layer(self, i: int) -> LayerHook | None: ...

    def decoder_base(self, base: torch.Tensor) -> torch.Tensor: ...

    def store_decoder_input(self, x: torch.Tensor) -> None: ...

    def decoder_layer(self, i: int) -> LayerHook | None: ...

    def decoder_output(self, x: torch.Tensor) -> torch.Tensor: ...


class HeadCache(Protocol):
    """The diffusion head inside one step's DDPM chain, timestep by timestep."""

    full: bool                        # this timestep computes everything
    cfg_delta: torch.Tensor | None    # cond - uncond eps of the last full timestep

    def begin(self, i: int, num_timesteps: int) -> None: ...

    def skips_block(self, j: int) -> bool: ...

    def block_delta(self, j: int, n: int) -> torch.Tensor: ...

    def store_block_delta(self, j: int, x: torch.Tensor, x_in: torch.Tensor) -> None: ...

    def reuse_mlp(self, j: int, n: int) -> torch.Tensor | None: ...

    def store_mlp(self, j: int, h: torch.Tensor) -> None: ...

    def store_cfg_delta(self, delta: torch.Tensor) -> None: ...
