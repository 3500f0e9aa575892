"""`argen bench llamagen`: plain AR vs exact speculative vs LANTERN vs SJD, measured in one run.

Every method runs on the same seeded random llamagen_tiny weights (drafter: llamagen_tiny_draft),
the same classes and seeds, interleaved rep by rep so machine noise hits all alike. Reported per
method and batch size: target forward passes per image and the step compression 256 / that number,
the batched target calls (a batch steps until its slowest row is done), the mean accepted length
(tokens per verification step), drafter forwards per image, FLOPs of the
token generation (target + drafter; the VQ decoder is the same for all and left out), and the
wall-clock of the token generation relative to plain AR.

Random weights make the acceptance rates meaningless (a random drafter rarely agrees with a random
target, and LANTERN's neighbour mass depends on how flat the random distributions are): the rows
measure the machinery (cost per step, batching, roll-back), not what trained models would gain.

Options (key=value): batches=1,16  reps=2  device=cpu  threads=1  methods=<comma list of names below>
"""
from __future__ import annotations

import statistics
import time

import torch

from accel.api import load_generator
from accel.flops import FlopCounter
from accel.models import llamagen as lg

METHODS = {  # name: (accel, options)
    "none": ("none", {}),
    "speculative": ("speculative", {"drafter": "llamagen_tiny_draft", "gamma": 4}),
    "speculative_self": ("speculative", {"drafter": "llamagen_tiny", "gamma": 4}),
    "lantern_k100_d0.05": ("lantern", {"gamma": 4, "lantern_k": 100, "lantern_delta": 0.05}),
    "lantern_k1000_d0.1": ("lantern", {"gamma": 4, "lantern_k": 1000, "lantern_delta": 0.1}),
    "lantern_k1000_d0.4": ("lantern", {"gamma": 4, "lantern_k": 1000, "lantern_delta": 0.4}),
    "lantern++_k10_l5": ("lantern", {"gamma": 4, "lantern_k": 10, "lantern_lambda": 5.0}),
    "sjd_L16": ("sjd", {"window": 16}),
    "sjd_L16_repeat": ("sjd", {"window": 16, "sjd_init": "repeat"}),
}
NOTES = {
    "speculative_self": "drafter = the target's own weights: 100% acceptance, the engine's ceiling",
}


def tokens_only(gen, labels: torch.Tensor, seeds: list[int]):
    """Token generation alone (what the methods change), timed; returns (seconds, counters)."""
    generators = [torch.Generator(device=gen.device).manual_seed(s) for s in seeds]
    flops = FlopCounter()
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode(), gen.autocast():
        if gen.decoder is None:
            lg.generate_tokens(gen.model, labels, gen.opts, generators, flops)
            counters = {"accepted_length": 1.0, "target_forwards_per_image": float(gen.model.block_size),
                        "target_forward_calls": float(gen.model.block_size), "drafter_forwards_per_image": 0.0}
        else:
            _, counters = gen.decoder.generate(labels, generators, flops)
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, {**counters, **flops.per_image(len(seeds))}


def run(overrides: dict[str, str]) -> None:
    batches = [int(b) for b in overrides.pop("batches", "1,16").split(",")]
    reps = int(overrides.pop("reps", "2"))
    device = torch.device(overrides.pop("device", "cpu"))
    threads = int(overrides.pop("threads", "1"))  # the tiny model is op-bound: one thread is fastest
    if device.type == "cpu":
        torch.set_num_threads(threads)
    names = overrides.pop("methods", ",".join(METHODS)).split(",")
    if overrides:
        raise SystemExit(f"argen bench llamagen: unknown option(s) {sorted(overrides)}")
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise SystemExit(f"argen bench llamagen: unknown method(s) {bad}; known: {', '.join(METHODS)}")
    if "none" not in names:
        names = ["none"] + names
    gens = {n: load_generator("llamagen_tiny", accel=METHODS[n][0], device=device, random_init=True,
                              **METHODS[n][1]) for n in names}
    print(f"model=llamagen_tiny (random weights) device={device} torch_threads={torch.get_num_threads()} "
          f"reps={reps} (median) sampling: cfg={gens['none'].opts.cfg} top_k={gens['none'].opts.top_k} "
          f"temperature={gens['none'].opts.temperature}\n")
    print("| method | batch | target fwd/img | step compression | batched target calls | accepted length "
          "| drafter fwd/img | AR GFLOPs/img | AR FLOPs vs none | AR s/img | wall-clock speed-up vs none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:  # warm-up (also builds LANTERN's neighbour tables before timing)
        tokens_only(gens[n], torch.tensor([0]), [0])
    for B in batches:
        labels = torch.tensor([(37 * i) % 1000 for i in range(B)], device=device)
        seeds = list(range(B))
        times = {n: [] for n in names}
        counters = {}
        for _ in range(reps):
            for n in names:
                sec, counters[n] = tokens_only(gens[n], labels, seeds)
                times[n].append(sec)
        base_t = statistics.median(times["none"])
        base = counters["none"]
        base_flops = base["flops"]
        for n in names:
            c, t = counters[n], statistics.median(times[n])
            fwd = c["target_forwards_per_image"]
            print(f"| {n} | {B} | {fwd:.1f} | {256 / fwd:.2f}x | {c['target_forward_calls']:.0f} "
                  f"| {c['accepted_length']:.2f} "
                  f"| {c['drafter_forwards_per_image']:.1f} | {c['flops'] / 1e9:.3f} | {c['flops'] / base_flops:.2f}x "
                  f"| {t / B:.3f} | {base_t / t:.2f}x |", flush=True)
    for n, note in NOTES.items():
        if n in names:
            print(f"\n{n}: {note}")
