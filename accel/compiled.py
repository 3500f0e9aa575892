"""Compiled forwards with static shapes: the speed-up attaches from outside the network (as in gpt-fast).

`CompiledForward(module, device)` wraps a module's forward in torch.compile(dynamic=False): inductor's
generated kernels on CPU, and on CUDA mode "reduce-overhead" (CUDA graphs). Each distinct input shape (the
prefill, a one-token decode step, a verification window) compiles once, on first use; the seconds spent
compiling are kept in `compile_seconds` so that a generator can report them once instead of hiding them
in its first batch. A compiled forward needs the static KV cache (accel.families.llamagen.network.KVCache
static=True): every step attends over all slots, masked, so no shape depends on the position.

compile=auto|true|false: auto compiles on CUDA only. On this project's 2-core CPU a compiled llamagen_toy
decode step takes 1.1 ms against 3.3 ms eager (static cache) after ~16 s of compiling per shape
(docs/BENCHMARKS.md), so it pays after some tens of images per process: worth it for a long run, not for
a test or a demo, hence opt-in there.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from accel.errors import ArgenError

COMPILE_VALUES = ("auto", "true", "false")


def resolve_compile(value: Any, device: torch.device) -> bool:
    """compile= as given (True / False / "auto" / "true" / "false") -> whether to compile on `device`."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text not in COMPILE_VALUES:
        raise ArgenError(f"compile={value!r}; expected auto (on CUDA only), true or false")
    return device.type == "cuda" if text == "auto" else text == "true"


class CompiledForward:
    """`module`'s forward compiled for static shapes, one graph per input shape."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.fn = torch.compile(module, dynamic=False, mode=mode)
        self.seen: set[tuple] = set()
        self.compile_seconds = 0.0

    @staticmethod
    def _signature(args: tuple, kwargs: dict) -> tuple:
        def sig(x: Any) -> Any:
            return tuple(x.shape) if isinstance(x, torch.Tensor) else (type(x).__name__,)
        return tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self._signature(args, kwargs)
        if key in self.seen:
            return self.fn(*args, **kwargs)
        t0 = time.perf_counter()  # the first call of a shape compiles it (and runs it once)
        out = self.fn(*args, **kwargs)
        self.compile_seconds += time.perf_counter() - t0
        self.seen.add(key)
        return out
