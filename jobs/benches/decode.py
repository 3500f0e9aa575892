"""`argen bench decode`: LlamaGen's plain decoding, eager vs compiled (static KV cache + torch.compile), same weights, one run.

Per batch size: seconds per image of the token generation (interleaved call by call, after one untimed call
that compiles), the speed-up of the compiled step, GFLOP/s (analytic FLOPs of the target / seconds), and the
seconds spent compiling (once per process and shape).

Options: model=llamagen_toy (trained; or any llamagen_* with random weights, e.g. llamagen_b)  batches=1,8
         images=8 (per batch size and row)  threads=1
"""
from __future__ import annotations

import os

import torch

from jobs.benches.llamagen import tokens_only


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
    print(f"model={model}{' (random weights)' if random_init else ''} torch_threads={torch.get_num_threads()} "
          f"images={images} per batch size and row; load average at start {os.getloadavg()[0]:.1f}\n")
    print("| batch | eager s/img | compiled s/img | speed-up | eager GFLOP/s | compiled GFLOP/s | compile s |")
    print("|---|---|---|---|---|---|---|")
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
        print(f"| {B} | {times[False] / n:.3f} | {times[True] / n:.3f} | {times[False] / times[True]:.2f}x "
              f"| {flops[False] * n / times[False] / 1e9:.1f} | {flops[True] * n / times[True] / 1e9:.1f} "
              f"| {compiled.compile_seconds - before:.0f} |", flush=True)
