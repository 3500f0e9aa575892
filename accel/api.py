"""The Generator contract: one accelerated generator on one device. All that pipeline/ and jobs/ take from accel.

    gen = load_generator("var_d16", accel="fastvar", device="cuda",
                         checkpoint="/ckpt/var_d16.pth", tokenizer_checkpoint="/ckpt/vae_ch160v4096z32.pth")
    out = gen.generate(conditions=[207, 360, 387], seeds=[0, 1, 2])
    out.images  # uint8 [B, H, W, 3];  out.stats  # seconds, images, flops, method counters

Names resolve through accel.registry (families and methods); what the generators share is in accel.generator.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch

from accel import registry
from accel.errors import ArgenError
from accel.generator import (BaseGenerator, GenerationOutput, require_weights, resolve_device, resolve_precision,
                             seeded_generators, seeded_init, to_uint8)
from accel.options import check_option_names, option_flag, option_int, option_number
from accel.registry import (check_settings, conditions_of, eval_image_size_of, family_of, known_model_names,
                            method_names)

__all__ = ["ArgenError", "BaseGenerator", "GenerationOutput", "Generator", "check_compile", "check_option_names",
           "check_precision", "check_settings",
           "conditions_of", "eval_image_size_of", "family_of", "known_model_names", "load_generator",
           "method_names", "option_flag", "option_int", "option_number", "require_weights", "resolve_device",
           "seeded_generators", "seeded_init", "to_uint8"]


@runtime_checkable
class Generator(Protocol):
    name: str
    accel: str
    image_size: int
    num_classes: int
    model: torch.nn.Module
    device: torch.device
    eval_image_size: int | None      # the side the release computes FID at, when not the generated one
    conditions_are_prompts: bool     # text prompts (str) instead of class ids (int)

    def generate(self, conditions: Sequence[int | str], seeds: Sequence[int] | None = None) -> GenerationOutput: ...


def check_compile(accel: str, compile: bool | str) -> None:
    """compile= for this method, before anything is built (argen generate checks it before Ray): a value of
    the right form, and true only where a compiled step exists (the release's loops, accel=none)."""
    from accel.compiled import resolve_compile

    resolve_compile(compile, torch.device("cpu"), accel)  # auto never refuses


def check_precision(precision: str) -> None:
    """precision= before anything is built (argen generate checks it before Ray)."""
    resolve_precision(precision, torch.device("cpu"), "fp32")


def load_generator(name: str, accel: str = "none", device: str | torch.device | None = None,
                   checkpoint: str | None = None, tokenizer_checkpoint: str | None = None,
                   random_init: bool = False, compile: bool | str = False, precision: str = "auto",
                   **method_options: Any) -> Generator:
    """Build the named generator with its acceleration on one device.

    `checkpoint` / `tokenizer_checkpoint`: released files (local path or s3://). Without them,
    `random_init=True` must be passed explicitly (seeded, identical on every worker).
    `method_options`: sampling options (cfg, top_k, ...) and the method's options.
    `compile`: True / False / "auto" (CUDA only): torch.compile the sampling step for static shapes
    (accel/compiled.py): LlamaGen's decoding step with a static KV cache, VAR's block call per scale, MAR's
    block call and diffusion head; the release's loops (accel=none) so far.
    `precision`: "auto" (the release's on CUDA: VAR and MAR fp16 autocast, LlamaGen bf16 weights and KV cache;
    fp32 on CPU), or "fp32" / "bf16" / "fp16" (accel.generator.resolve_precision).
    """
    registry.method(accel, name)  # an unknown accel, or one that does not apply, before anything is built
    device = resolve_device(device)
    check_precision(precision)
    check_compile(accel, compile)
    return registry.make_generator(name, accel, device=device, checkpoint=checkpoint,
                                   tokenizer_checkpoint=tokenizer_checkpoint, random_init=bool(random_init),
                                   precision=precision, compile=compile, **method_options)
