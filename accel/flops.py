"""Analytic FLOP counts (a multiply-add is 2 FLOPs), per generated image and per method.

Models count the work they actually do from the shapes they process (tokens in the query, length of
the attention context), so a pruned or cached step is counted at its real size. The formulas are
checked against torch.utils.flop_counter in the tests. Elementwise work (norms, activations,
softmax) is left out, as is usual.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict

import torch


def linear(n_tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * n_tokens * d_in * d_out


def attention(n_q: int, n_kv: int, dim: int) -> float:
    """Scores q @ k^T plus the weighted sum of values, over all heads (dim = heads * head_dim)."""
    return 4.0 * n_q * n_kv * dim


def conv2d(h_out: int, w_out: int, c_in: int, c_out: int, k: int) -> float:
    return 2.0 * h_out * w_out * c_in * c_out * k * k


class FlopCounter:
    """Sums FLOPs by component for one generate() call."""

    def __init__(self) -> None:
        self.by_component: dict[str, float] = defaultdict(float)

    def add(self, component: str, flops: float) -> None:
        self.by_component[component] += float(flops)

    @property
    def total(self) -> float:
        return float(sum(self.by_component.values()))

    def per_image(self, n_images: int) -> dict[str, float]:
        """Counters for GenerationOutput.stats: flops (per image) and flops_<component> (per image)."""
        out = {"flops": self.total / max(n_images, 1)}
        for k, v in sorted(self.by_component.items()):
            out[f"flops_{k}"] = v / max(n_images, 1)
        return out


_measured: dict[tuple, float] = {}


def measured_flops(key: tuple, module: torch.nn.Module, *example_inputs_shapes: tuple[int, ...],
                   method: str = "forward") -> float:
    """FLOPs of one call of `module.<method>` on inputs of the given shapes, counted once by
    torch.utils.flop_counter on the meta device (no real compute), then cached under `key`.
    Used for the convolutional tokenizers, whose cost does not depend on the sampling method."""
    if key in _measured:
        return _measured[key]
    from torch.utils.flop_counter import FlopCounterMode
    import copy

    meta = copy.deepcopy(module).to("meta") if not _is_meta(module) else module
    inputs = [torch.empty(s, device="meta") for s in example_inputs_shapes]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        getattr(meta, method)(*inputs)
    _measured[key] = float(counter.get_total_flops())
    return _measured[key]


def _is_meta(module: torch.nn.Module) -> bool:
    p = next(iter(module.parameters()), None)
    return p is not None and p.device.type == "meta"


# The counter of the current generate() call: modules add the work they do (from the shapes they process)
# with count(); generate() opens the scope with counting(counter). No scope: nothing is counted.
_ACTIVE: contextvars.ContextVar[FlopCounter | None] = contextvars.ContextVar("argen_flops", default=None)


def count(component: str, flops: float) -> None:
    if torch.compiler.is_compiling():  # a compiled graph runs no Python: its caller counts from the shapes
        return
    counter = _ACTIVE.get()
    if counter is not None:
        counter.add(component, flops)


@contextlib.contextmanager
def counting(counter: FlopCounter):
    token = _ACTIVE.set(counter)
    try:
        yield counter
    finally:
        _ACTIVE.reset(token)
