"""`argen bench llamagen`: plain AR vs exact speculative vs LANTERN vs SJD, measured in one run.

Every method runs on the same seeded random llamagen_tiny weights (drafter: llamagen_tiny_draft),
the same classes and seeds, interleaved rep by rep so machine noise hits all alike. Reported per
method and batch size: target forward passes per image and the step compression 256 / that number,
the batched target calls (a batch steps until its slowest row is done), the mean accepted length
(tokens per verification step), drafter forwards per image, FLOPs of the
token generation (target + drafter; the VQ decoder is the same for all and left out), and the
wall-clock of the token generation relative to plain AR.

A second table (t2i=1, the default) runs the same machinery on the text-to-image structure:
llamagen_t2i_tiny (120 prompt-feature positions, random weights; drafter llamagen_t2i_tiny_draft)
conditioned on prompts encoded by a tiny random T5 written to a temporary folder
(accel.text_encoder.write_random_t5; FLAN-T5-XL's 2048-dim features, 2 narrow layers). The prompt
encoding is done once per batch outside the timed token generation and reported on its own line.

Random weights make the acceptance rates meaningless (a random drafter rarely agrees with a random
target, and LANTERN's neighbour mass depends on how flat the random distributions are): the rows
measure the machinery (cost per step, batching, roll-back), not what trained models would gain.

Options (key=value): batches=1,16  reps=2  device=cpu  threads=1  methods=<comma list of names below>
                     t2i=1 (both tables; 0 = the class-to-image table only, only = the text-to-image one only)
"""
from __future__ import annotations

import statistics
import time

import torch

from accel.api import load_generator
from accel.flops import FlopCounter, counting
from accel.families import llamagen as lg

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
T2I_METHODS = {  # the text-to-image rows: plain, exact speculative, LANTERN, SJD
    "none": ("none", {}),
    "speculative": ("speculative", {"drafter": "llamagen_t2i_tiny_draft", "gamma": 4}),
    "lantern_k1000_d0.1": ("lantern", {"gamma": 4, "lantern_k": 1000, "lantern_delta": 0.1}),
    "sjd_L16": ("sjd", {"window": 16}),
}
T2I_PROMPTS = ["a red cat sitting on a wooden table", "an astronaut riding a horse in the forest",
               "a bowl of fruit on a kitchen counter", "two dogs playing in the snow",
               "a city street at night with neon signs", "a sailing boat on a calm lake at sunset"]
NOTES = {
    "speculative_self": "drafter = the target's own weights: 100% acceptance, the engine's ceiling",
}


def tokens_only(gen, cond, seeds: list[int]):
    """Token generation alone (what the methods change), timed; returns (seconds, counters).

    cond: class ids [B] or, for a text model, the encoded prompts (lg.TextCondition)."""
    generators = [torch.Generator(device=gen.device).manual_seed(s) for s in seeds]
    flops = FlopCounter()
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode(), gen.autocast(), counting(flops):
        if gen.decoder is None:
            lg.generate_tokens(gen.model, cond, gen.opts, generators, forward=getattr(gen, "compiled", None))
            counters = {"accepted_length": 1.0, "target_forwards_per_image": float(gen.model.block_size),
                        "target_forward_calls": float(gen.model.block_size), "drafter_forwards_per_image": 0.0}
        else:
            _, counters = gen.decoder.generate(cond, generators)
    if gen.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, {**counters, **flops.per_image(len(seeds))}


def table(gens: dict, names: list[str], batches: list[int], reps: int, make_cond) -> None:
    """One markdown table: every method at every batch size, interleaved rep by rep."""
    print("| method | batch | target fwd/img | step compression | batched target calls | accepted length "
          "| drafter fwd/img | AR GFLOPs/img | AR FLOPs vs none | AR s/img | wall-clock speed-up vs none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:  # warm-up (also builds LANTERN's neighbour tables before timing)
        tokens_only(gens[n], make_cond(1), [0])
    for B in batches:
        cond = make_cond(B)
        seeds = list(range(B))
        times = {n: [] for n in names}
        counters = {}
        for _ in range(reps):
            for n in names:
                sec, counters[n] = tokens_only(gens[n], cond, seeds)
                times[n].append(sec)
        base_t = statistics.median(times["none"])
        base_flops = counters["none"]["flops"]
        for n in names:
            c, t = counters[n], statistics.median(times[n])
            fwd = c["target_forwards_per_image"]
            N = gens[n].model.block_size
            print(f"| {n} | {B} | {fwd:.1f} | {N / fwd:.2f}x | {c['target_forward_calls']:.0f} "
                  f"| {c['accepted_length']:.2f} "
                  f"| {c['drafter_forwards_per_image']:.1f} | {c['flops'] / 1e9:.3f} | {c['flops'] / base_flops:.2f}x "
                  f"| {t / B:.3f} | {base_t / t:.2f}x |", flush=True)


def run(overrides: dict[str, str]) -> None:
    batches = [int(b) for b in overrides.pop("batches", "1,16").split(",")]
    reps = int(overrides.pop("reps", "2"))
    device = torch.device(overrides.pop("device", "cpu"))
    threads = int(overrides.pop("threads", "1"))  # the tiny model is op-bound: one thread is fastest
    t2i = overrides.pop("t2i", "1")
    if t2i not in ("0", "1", "only"):
        raise SystemExit(f"argen bench llamagen: t2i={t2i!r}; expected 1 (both tables), 0 or only")
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
    if t2i == "only":
        return run_t2i(batches, reps, device)
    gens = {n: load_generator("llamagen_tiny", accel=METHODS[n][0], device=device, random_init=True,
                              **METHODS[n][1]) for n in names}
    print(f"model=llamagen_tiny (random weights) device={device} torch_threads={torch.get_num_threads()} "
          f"reps={reps} (median) sampling: cfg={gens['none'].opts.cfg} top_k={gens['none'].opts.top_k} "
          f"temperature={gens['none'].opts.temperature}\n")
    table(gens, names, batches, reps,
          lambda B: torch.tensor([(37 * i) % 1000 for i in range(B)], device=device))
    for n, note in NOTES.items():
        if n in names:
            print(f"\n{n}: {note}")
    if t2i == "1":
        run_t2i(batches, reps, device)


def run_t2i(batches: list[int], reps: int, device: torch.device) -> None:
    """The text-to-image table: llamagen_t2i_tiny on prompts through a tiny random T5 (see the docstring)."""
    import tempfile

    from accel.text_encoder import write_random_t5

    with tempfile.TemporaryDirectory(prefix="argen-bench-t5-") as folder:
        write_random_t5(folder)
        gens = {n: load_generator("llamagen_t2i_tiny", accel=a, device=device, random_init=True, text_encoder=folder,
                                  **o) for n, (a, o) in T2I_METHODS.items()}
        base = gens["none"]
        encoded: dict[int, lg.TextCondition] = {}
        encode_seconds: dict[int, float] = {}

        def make_cond(B: int) -> lg.TextCondition:
            if B not in encoded:
                texts = [T2I_PROMPTS[i % len(T2I_PROMPTS)] for i in range(B)]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    encoded[B], _ = base.encode_prompts(texts)
                encode_seconds[B] = time.perf_counter() - t0
            return encoded[B]

        print(f"\nmodel=llamagen_t2i_tiny (random weights; prompts through a tiny random T5, 2048-dim features) "
              f"device={device} torch_threads={torch.get_num_threads()} reps={reps} (median) sampling: "
              f"cfg={base.opts.cfg} top_k={base.opts.top_k} temperature={base.opts.temperature}\n")
        table(gens, list(T2I_METHODS), batches, reps, make_cond)
        print("\nprompt encoding (tiny T5, once per batch, not in the table): " + ", ".join(
            f"batch {B}: {encode_seconds[B] / B * 1000:.1f} ms/prompt" for B in batches if B in encode_seconds))
