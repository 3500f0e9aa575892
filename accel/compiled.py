"""Compiled sampling steps: the speed-up attaches from outside the networks (as in gpt-fast).

`CompiledForward(fn, device)` wraps a module or a function in torch.compile: inductor's generated kernels on
CPU, and on CUDA mode "reduce-overhead" (CUDA graphs). What each family compiles is the release's loop's
hot call, with no method's hooks: LlamaGen's forward with the static KV cache (every step attends over all
slots, masked, so no shape depends on the position; one graph for the prefill, one per decode window), VAR's
block call (one graph per scale, shared by the blocks), MAR's block call and diffusion head (dynamic=None:
the shapes that change with the masking schedule are generalised after the first recompile). The seconds
spent compiling are kept in `compile_seconds` so that a generator reports them once (its stats'
`compile_seconds`) instead of hiding them in its first batch. A compiled call runs none of the modules'
analytic FLOP counts (accel.flops.count is a no-op while tracing); the loops count it from the shapes.

compile=auto|true|false: auto compiles on CUDA only. On the 2-core CPU a compiled step pays after some
images per process (docs/BENCHMARKS.md); compiling takes tens of seconds to minutes per model, too long
for a test or a demo, hence opt-in there.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.overrides import TorchFunctionMode

from accel.errors import ArgenError

COMPILE_VALUES = ("auto", "true", "false")
RECOMPILE_LIMIT = 64


def resolve_compile(value: Any, device: torch.device, accel: str = "none") -> bool:
    """compile= as given (True / False / "auto" / "true" / "false") -> whether to compile on `device`.
    The compiled steps are the release's sampling loops: with a method (accel != none) auto stays eager and
    true is refused."""
    if isinstance(value, bool):
        auto, wanted = False, value
    else:
        text = str(value).lower()
        if text not in COMPILE_VALUES:
            raise ArgenError(f"compile={value!r}; expected auto (on CUDA only), true or false")
        auto = text == "auto"
        wanted = device.type == "cuda" if auto else text == "true"
    if wanted and accel != "none":
        if auto:
            return False
        raise ArgenError(f"compile={value!r} with accel={accel}: the compiled step covers the release's sampling "
                         f"loop (accel=none) so far; the methods run eager (pass compile=false)")
    return wanted


# On CPU, BLAS's gemm computes x @ W^T of a few to ~128 rows well below its peak: it packs the weight for a
# small M and streams it slowly, while the same product as W @ x^T (the weight as the first operand) runs
# faster; in a compiled MLP the gain ends near 128 rows and turns into a loss by 512 (the transposed result
# costs a copy). Inside a compiled step every linear of at most WEIGHT_FIRST_ROWS rows is computed as W @ x^T,
# and of at most PER_ROW_MV rows as one matrix-vector product per row (which inductor fuses into one pass over
# the weight, near the memory bandwidth). The eager path keeps the release's arithmetic. docs/BENCHMARKS.md.
WEIGHT_FIRST_ROWS = 128
PER_ROW_MV = 2


class WeightFirstLinear(TorchFunctionMode):
    """F.linear over at most WEIGHT_FIRST_ROWS rows as W @ x^T (traced into compiled graphs on CPU)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            rows = x.reshape(-1, x.shape[-1])
            if rows.shape[0] <= WEIGHT_FIRST_ROWS:
                if rows.shape[0] <= PER_ROW_MV:
                    out = torch.stack([torch.mv(weight, rows[i]) for i in range(rows.shape[0])])
                else:
                    out = (weight @ rows.T).T
                out = out.reshape(*x.shape[:-1], weight.shape[0])
                return out if bias is None else out + bias
        return func(*args, **kwargs)


class CompiledForward:
    """`fn` (a module, or a function such as one block's call) compiled for static shapes, one graph per input
    shape (dynamic=None: static first, then one graph generalised over the shapes that change, for loops with
    many shapes such as MAR's masking schedule); on CPU the linears of up to WEIGHT_FIRST_ROWS rows as
    W @ x^T (WeightFirstLinear)."""

    def __init__(self, fn: Callable, device: torch.device, dynamic: bool | None = False):
        mode = "reduce-overhead" if device.type == "cuda" else None
        # a graph per shape: VAR's ten scales; past the default limit dynamo would run eager
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        self.compiled = torch.compile(fn, dynamic=dynamic, mode=mode)
        self.weight_first = device.type == "cpu"
        self.compile_seconds = 0.0

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        if not self.weight_first:
            return self.compiled(*args, **kwargs)
        with WeightFirstLinear():
            return self.compiled(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        graphs = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        out = self._run(*args, **kwargs)
        if counters["stats"]["unique_graphs"] != graphs:  # this call compiled a graph (and ran it once)
            self.compile_seconds += time.perf_counter() - t0
        return out
