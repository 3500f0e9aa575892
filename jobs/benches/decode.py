"""`argen bench decode`: LlamaGen's plain decoding, eager vs compiled (static KV cache + torch.compile), same weights, one run.

Per batch size: seconds per image of the token generation (interleaved call by call, after one untimed call
that compiles), the speed-up of the compiled step, GFLOP/s (analytic FLOPs of the target / seconds), the
seconds spent compiling (once per process and shape), and the fraction of the roofline each reaches: the
roofline time is max(FLOPs / matmul peak, weight bytes read / memory bandwidth), both measured at the start of
the same run with the same threads (a large fp32 matmul; a matrix-vector product over a matrix far larger
than the caches, which is what a batch-1 decode step does with every weight).

Options: model=llamagen_toy (trained; or any llamagen_* with random weights, e.g. llamagen_b)  batches=1,8
         images=8 (per batch size and row)  threads=1
"""
from __future__ import annotations

import os
import time

import torch

from jobs.benches.llamagen import tokens_only


def measured_peaks(reps: int = 5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[float, float]:
    """(matmul FLOP/s in `dtype`, memory read bytes/s) on `device` with this process's threads, best of reps."""
    device = torch.device(device)
    a, b = (torch.randn(2048 if device.type == "cpu" else 8192, 2048 if device.type == "cpu" else 8192,
                        device=device, dtype=dtype) for _ in range(2))
    matrix = torch.randn(8192, 16384, device=device)  # 512 MiB of fp32: far beyond any cache
    vector = torch.randn(16384, device=device)

    def timed(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        return best

    return 2 * a.shape[0] ** 3 / timed(lambda: torch.mm(a, b)), matrix.numel() * 4 / timed(
        lambda: torch.mv(matrix, vector))


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: all but the embedding tables, of which it reads a row each."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in tables)


def run(overrides: dict[str, str]) -> None:
    from accel.api import load_generator

    model = overrides.pop("model", "llamagen_toy")
    batches = [int(b) for b in overrides.pop("batches", "1,8").split(",")]
    images = int(overrides.pop("images", "8"))
    torch.set_num_threads(int(overrides.pop("threads", "1")))
    if overrides:
        raise SystemExit(f"argen bench decode: unknown option(s) {sorted(overrides)}")
    random_init = model != "llamagen_toy"
    gens = {c: load_generator(model, device="cpu", random_init=random_init, compile=c) for c in (False, True)}
    peak, bandwidth = measured_peaks()
    step_bytes = weight_bytes_per_step(gens[False].model)
    steps = gens[False].model.block_size  # the prefill and one step per later token: a read of the weights each
    print(f"model={model}{' (random weights)' if random_init else ''} torch_threads={torch.get_num_threads()} "
          f"images={images} per batch size and row; load average at start {os.getloadavg()[0]:.1f}")
    print(f"measured: fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, memory read {bandwidth / 1e9:.1f} GB/s; weights "
          f"read per step {step_bytes / 1e6:.1f} MB\n")
    print("| batch | eager s/img | compiled s/img | speed-up | eager GFLOP/s | compiled GFLOP/s | roofline s/img "
          "| bound | eager of roofline | compiled of roofline | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for B in batches:
        compiled = gens[True].compiled
        before = compiled.compile_seconds
        for gen in gens.values():  # warm-up; the compiled one compiles this batch size's shapes here
            tokens_only(gen, torch.tensor([0] * B), list(range(B)))
        times = {False: 0.0, True: 0.0}
        flops = {}
        for c in range(max(1, images // B)):
            seeds = [c * B + i for i in range(B)]
            for key, gen in gens.items():
                sec, cnt = tokens_only(gen, torch.tensor([s % 10 for s in seeds]), seeds)
                times[key] += sec
                flops[key] = cnt["flops"]
        n = max(1, images // B) * B
        compute, memory = flops[False] / peak, step_bytes * steps / B / bandwidth  # seconds per image
        roof = max(compute, memory)
        print(f"| {B} | {times[False] / n:.3f} | {times[True] / n:.3f} | {times[False] / times[True]:.2f}x "
              f"| {flops[False] * n / times[False] / 1e9:.1f} | {flops[True] * n / times[True] / 1e9:.1f} "
              f"| {roof:.3f} | {'memory' if memory > compute else 'compute'} | {roof * n / times[False]:.0%} "
              f"| {roof * n / times[True]:.0%} | {compiled.compile_seconds - before:.0f} |", flush=True)
