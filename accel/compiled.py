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
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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


# A CPU decoding step reads every weight for a handful of rows (the batch, doubled by CFG). BLAS's gemm packs
# the weight for such small M and streams it far below the memory bandwidth. Inside a compiled step, one
# matrix-vector product per row (which inductor fuses into one pass over the weight) streams it near the
# bandwidth for 1-2 rows, and W @ x^T (the weight as BLAS's large operand) for 3-4; beyond 4 rows neither beats
# gemm in the full step (docs/BENCHMARKS.md).
FEW_ROWS = 4
PER_ROW_MV = 2


class FewRowLinear(TorchFunctionMode):
    """F.linear over at most FEW_ROWS rows without gemm's packing of the weight (traced into compiled graphs)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rows = x.reshape(-1, x.shape[-1])
            if rows.shape[0] <= FEW_ROWS:
                if rows.shape[0] <= PER_ROW_MV:
                    out = torch.stack([torch.mv(weight, rows[i]) for i in range(rows.shape[0])])
                else:
                    out = (weight @ rows.T).T
                out = out.reshape(*x.shape[:-1], weight.shape[0])
                return out if bias is None else out + bias
        return func(*args, **kwargs)


class CompiledForward:
    """`module`'s forward compiled for static shapes, one graph per input shape; on CPU the few-row linears
    of decoding steps as matrix-vector products (FewRowLinear)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        mode = "reduce-overhead" if device.type == "cuda" else None
        self.compiled = torch.compile(module, dynamic=False, mode=mode)
        self.few_rows = device.type == "cpu"
        self.seen: set[tuple] = set()
        self.compile_seconds = 0.0

    def fn(self, *args: Any, **kwargs: Any) -> Any:
        if not self.few_rows:
            return self.compiled(*args, **kwargs)
        with FewRowLinear():
            return self.compiled(*args, **kwargs)

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
