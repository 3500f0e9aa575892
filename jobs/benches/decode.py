"""`argen bench decode`: every family's sampling loop eager vs compiled (accel/compiled.py), same weights, one run.

Per batch size: seconds per image of the sampling loop alone (LlamaGen's tokens, VAR's f_hat, MAR's latents;
the tokenizer's decoding is the same in both and left out), interleaved call by call after one untimed call
that compiles; the speed-up of the compiled loop, GFLOP/s (analytic FLOPs / seconds) and their fraction of the
matmul peak, the seconds spent compiling (once per process and shape), and the fraction of the roofline each
reaches: the roofline time is max(FLOPs / matmul peak, weight bytes read / memory bandwidth), both measured at
the start of the same run with the same threads (a large fp32 matmul; a matrix-vector product over a matrix
far larger than the caches, which is what a batch-1 decode step does with every weight).

Options: model=llamagen_toy (trained; any other model runs seeded random weights: llamagen_b, var_d16,
         mar_base)  batches=1,8  images=8 (per batch size and row)  threads=1
         mar_steps=16 (MAR: steps, with 25 DDPM steps, as issue #23's bar; 0 keeps the model's defaults)
"""
from __future__ import annotations

import os
import time

import torch

from accel.flops import FlopCounter, counting
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


def weight_bytes_per_batch(gen) -> float:
    """Bytes of weights one call of the sampling loop reads (whatever its batch): each step reads them all once
    (LlamaGen: the prefill and one step per later token; VAR: one pass per scale; MAR: the encoder and decoder
    once per step, the diffusion head once per DDPM step)."""
    model = gen.model
    if gen.family == "llamagen":
        return weight_bytes_per_step(model) * model.block_size
    if gen.family == "var":
        return weight_bytes_per_step(model) * len(model.patch_nums)
    head = weight_bytes_per_step(model.diffloss)
    steps = len(model.ddpm(gen.num_sampling_steps, gen.device).model_timesteps)
    return gen.num_iter * ((weight_bytes_per_step(model) - head) + head * steps)


def sampling_only(gen, labels: list[int], seeds: list[int]) -> tuple[float, dict]:
    """The family's sampling loop alone, timed: (seconds, counters with flops per image)."""
    if gen.family == "llamagen":
        return tokens_only(gen, torch.tensor(labels, device=gen.device), seeds)
    generators = [torch.Generator(device=gen.device).manual_seed(s) for s in seeds]
    cond = torch.tensor(labels, device=gen.device)
    flops = FlopCounter()
    gen._sync()
    t0 = time.perf_counter()
    with torch.inference_mode(), gen.autocast(), counting(flops):
        gen.sample_fhat(cond, generators) if gen.family == "var" else gen.sample_latents(cond, generators)
    gen._sync()
    return time.perf_counter() - t0, flops.per_image(len(seeds))


def run(overrides: dict[str, str]) -> None:
    from accel.api import load_generator

    model = overrides.pop("model", "llamagen_toy")
    batches = [int(b) for b in overrides.pop("batches", "1,8").split(",")]
    images = int(overrides.pop("images", "8"))
    torch.set_num_threads(int(overrides.pop("threads", "1")))
    mar_steps = int(overrides.pop("mar_steps", "16"))
    if overrides:
        raise SystemExit(f"argen bench decode: unknown option(s) {sorted(overrides)}")
    random_init = model != "llamagen_toy"
    options = {"num_iter": mar_steps, "num_sampling_steps": "25"} if model.startswith("mar") and mar_steps else {}
    gens = {c: load_generator(model, device="cpu", random_init=random_init, compile=c, **options)
            for c in (False, True)}
    peak, bandwidth = measured_peaks()
    batch_bytes = weight_bytes_per_batch(gens[False])
    print(f"model={model}{' (random weights)' if random_init else ''} {options or ''} "
          f"torch_threads={torch.get_num_threads()} images={images} per batch size and row; load average at start "
          f"{os.getloadavg()[0]:.1f}")
    print(f"measured: fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, memory read {bandwidth / 1e9:.1f} GB/s; weights "
          f"read per call of the loop {batch_bytes / 1e9:.2f} GB\n")
    print("| batch | eager s/img | compiled s/img | speed-up | eager GFLOP/s | compiled GFLOP/s | eager of peak "
          "| compiled of peak | roofline s/img | bound | eager of roofline | compiled of roofline | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    parts = gens[True].compiled_parts
    for B in batches:
        before = sum(p.compile_seconds for p in parts)
        for gen in gens.values():  # warm-up; the compiled one compiles this batch size's shapes here
            sampling_only(gen, [0] * B, list(range(B)))
        times = {False: 0.0, True: 0.0}
        flops = {}
        for c in range(max(1, images // B)):
            seeds = [c * B + i for i in range(B)]
            for key, gen in gens.items():
                sec, cnt = sampling_only(gen, [s % 10 for s in seeds], seeds)
                times[key] += sec
                flops[key] = cnt["flops"]
        n = max(1, images // B) * B
        compute, memory = flops[False] / peak, batch_bytes / B / bandwidth  # seconds per image
        roof = max(compute, memory)
        rate = {k: flops[k] * n / times[k] for k in times}
        print(f"| {B} | {times[False] / n:.3f} | {times[True] / n:.3f} | {times[False] / times[True]:.2f}x "
              f"| {rate[False] / 1e9:.1f} | {rate[True] / 1e9:.1f} "
              f"| {rate[False] / peak:.0%} | {rate[True] / peak:.0%} "
              f"| {roof:.3f} | {'memory' if memory > compute else 'compute'} | {roof * n / times[False]:.0%} "
              f"| {roof * n / times[True]:.0%} | {sum(p.compile_seconds for p in parts) - before:.0f} |", flush=True)
