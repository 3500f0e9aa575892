"""What every family's generator shares: argument checks, per-sample random generators, device and precision,
the one float -> uint8 rule, timing, and the rule that weights are given or random_init is asked for.

Each family (accel/families/<family>/family.py) subclasses `BaseGenerator` and implements `_sample`.
"""
from __future__ import annotations

import contextlib
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from accel.errors import ArgenError


@dataclass
class GenerationOutput:
    images: np.ndarray  # uint8 [B, H, W, 3]
    stats: dict[str, Any] = field(default_factory=dict)



def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float images in [-1, 1], [B, 3, H, W] -> uint8 [B, H, W, 3]; the only quantisation rule in argen.

    clamp(127.5 * x + 128, 0, 255) then floor (the cast truncates, and the value is non-negative).
    """
    x = torch.clamp(127.5 * images.float() + 128.0, 0.0, 255.0).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device, release: str) -> str:
    """The `precision` setting: "auto" is the family's release precision on CUDA and fp32 elsewhere (CPUs
    emulate bf16 slowly, and the bitwise checks run in fp32); fp32 / bf16 / fp16 ask for one."""
    value = str(precision).lower()
    if value == "auto":
        return release if device.type == "cuda" else "fp32"
    if value not in PRECISIONS:
        raise ArgenError(f"precision={precision!r}; expected auto (the release's precision on CUDA, fp32 on CPU), "
                         f"fp32, bf16 or fp16")
    return value


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgenError(f"device={device!s} was asked for but CUDA is not available here; use device=cpu or "
                         f"device=auto (in argen generate's Ray workers: ray.gpus_per_worker=1 gives each one a GPU)")
    return device


def seeded_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One torch.Generator per sample, so a sample does not depend on its batch-mates."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


class BaseGenerator:
    """Shared generate(): validation, seeding, precision, timing and the uint8 conversion.

    Subclasses set `family` and implement
    `_sample(conditions, generators) -> (images float [-1,1] [B,3,H,W], counters dict with "flops")`.
    """

    family: str = ""
    # what `precision=auto` means on CUDA (the release's sampling scripts), and how a lower precision applies:
    # autocast around sampling, or (False) the family casts its weights and caches itself
    release_precision: str = "bf16"
    precision_by_autocast: bool = True

    def __init__(self, *, name: str, accel: str, model: torch.nn.Module, tokenizer: torch.nn.Module | None,
                 device: torch.device, image_size: int, num_classes: int, precision: str = "fp32"):
        self.name, self.accel = name, accel
        self.model, self.tokenizer = model, tokenizer
        self.device, self.image_size, self.num_classes = device, image_size, num_classes
        self.precision = precision  # fp32 | bf16 | fp16, resolved (accel.generator.resolve_precision)
        self.compiled_parts: list = []  # the accel.compiled.CompiledForward objects sampling runs, if compiled
        self._compile_reported = 0.0

    # the side the release computes FID at, when not the generated one (LlamaGen's 384-px models: 256, bicubic);
    # argen's pipeline resizes the images it extracts features from (pipeline.quality.resize_for_eval)
    eval_image_size: int | None = None

    # -- conditions ---------------------------------------------------------------------------
    conditions_are_prompts: bool = False

    def check_conditions(self, conditions: Sequence[int | str]) -> list[int | str]:
        conditions = list(conditions)
        if not conditions:
            raise ArgenError("conditions is empty; pass at least one class id")
        if self.conditions_are_prompts:
            bad = [c for c in conditions if not isinstance(c, str)]
            if bad:
                raise ArgenError(f"{self.name} takes text prompts; got non-string conditions {bad[:5]}")
            return conditions
        out = []
        for c in conditions:
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
                raise ArgenError(f"condition {c!r} is not a class id; {self.name} expects integers in [0, {self.num_classes})")
            if not 0 <= int(c) < self.num_classes:
                raise ArgenError(f"class id {int(c)} is outside [0, {self.num_classes}) for {self.name}; "
                                 f"pass ids from 0 to {self.num_classes - 1}")
            out.append(int(c))
        return out

    # -- precision ----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32" or not self.precision_by_autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @staticmethod
    def check_seed(seed: Any, position: int) -> int:
        """A seed is a whole number torch.Generator takes, [0, 2**64); 1.7 or "a" is refused, not truncated."""
        try:
            value = None if isinstance(seed, (bool, np.bool_)) else operator.index(seed)  # ints, numpy/torch ints
        except TypeError:
            value = None
        if value is None or not 0 <= value < 1 << 64:
            raise ArgenError(f"seeds[{position}]={seed!r}; expected an integer in [0, 2**64), one per condition")
        return value

    # -- the one public call ------------------------------------------------------------------
    def generate(self, conditions: Sequence[int | str], seeds: Sequence[int] | None = None) -> GenerationOutput:
        conditions = self.check_conditions(conditions)
        seeds = list(range(len(conditions))) if seeds is None else [self.check_seed(s, i) for i, s in enumerate(seeds)]
        if len(seeds) != len(conditions):
            raise ArgenError(f"got {len(conditions)} conditions but {len(seeds)} seeds; pass one seed per condition")
        generators = seeded_generators(seeds, self.device)
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            images, counters = self._sample(conditions, generators)
        self._sync()
        seconds = time.perf_counter() - t0
        out = to_uint8(images)
        stats = {"seconds": seconds, "images": len(conditions), **counters}
        compiled = sum(part.compile_seconds for part in self.compiled_parts)
        if compiled > self._compile_reported:  # compiling happened in this call: say how long, once (its
            stats["compile_seconds"] = compiled - self._compile_reported  # seconds are in this call's too)
            self._compile_reported = compiled
        stats.setdefault("flops", 0.0)
        return GenerationOutput(images=out, stats=stats)

    def _sample(self, conditions: list, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def require_weights(name: str, checkpoint: str | None, tokenizer_checkpoint: str | None, random_init: bool,
                    needs_tokenizer: bool = True) -> None:
    """No checkpoint and no random_init=True is an error, never silent random weights."""
    if random_init:
        return
    missing = []
    if checkpoint is None:
        missing.append("checkpoint (model.checkpoint=...)")
    if needs_tokenizer and tokenizer_checkpoint is None:
        missing.append("tokenizer_checkpoint (model.tokenizer_checkpoint=...)")
    if missing:
        raise ArgenError(f"{name}: no {' and no '.join(missing)} given. Pass the released files, "
                         f"or random_init=True (model.random_init=true) for random weights (tests, benchmarks).")


@contextlib.contextmanager
def seeded_init(seed: int = 0):
    """Random initialisation that is identical on every worker (so resumed shards match)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
