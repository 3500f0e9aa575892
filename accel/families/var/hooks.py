"""The hooks VAR's sampler offers an acceleration: which tokens each sub-layer of each block computes, per scale.

`VAR.autoregressive_infer_cfg(..., token_hooks=...)` asks `begin_scale(si, pn)` at every scale and that scale's
`block(i)` for every block; a block with a TokenHook routes its attention and FFN branches through
`branch(name, x, fn)`. accel/methods/fastvar.py is one such method.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch


class TokenHook(Protocol):
    """Decides which tokens one sub-layer of one block computes at the current scale.

    `branch(name, x, fn)` gets the full residual stream x [rows, l, C] and `fn`, the sub-layer
    ("attn" or "ffn") applied to any subset of its tokens, and returns the branch output for all l
    tokens. The baseline is `fn(x)`."""

    def branch(self, name: str, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor: ...


class ScaleHooks(Protocol):
    """The token hooks of one scale: `block(i)` -> the TokenHook of block i, or None for the full block."""

    def block(self, i: int) -> TokenHook | None: ...


class TokenHooks(Protocol):
    """What a method attaches to the sampler for one generate() call (accel.registry.Method.check returns an
    object whose `start(batch_rows)` gives one). `num_scales`: the scales to run (None = all);
    `begin_scale(si, pn)` -> the scale's hooks; `stats()` -> the method's counters for the call."""

    num_scales: int | None

    def begin_scale(self, si: int, pn: int) -> ScaleHooks | None: ...

    def stats(self) -> dict[str, Any]: ...
