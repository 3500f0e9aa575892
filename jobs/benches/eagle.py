"""`argen bench eagle`: LlamaGen with the EAGLE drafter's dynamic trees vs plain AR and the chain drafter: wall-clock at batch 1 and 8, in one run.

Every row runs the same classes and seeds, interleaved rep by rep so machine noise hits all alike. Per row
and batch size: the token generation's seconds per image and the speed-up against plain AR measured in the
same run, target forwards per image, the accepted length (tokens per target forward), tree nodes, the
share of the decoder's time spent drafting, drafter forwards per image and the analytic FLOPs (target +
drafter) against plain AR.

model=llamagen_toy (default): the trained toy and its committed drafters (llamagen_toy_draft,
llamagen_toy_eagle); the acceptance figures are real. model=llamagen_b: random weights of the released
size (and a random EAGLE head): the speed mechanics only, acceptance is meaningless there.
quality=N (toy only) adds toy FID and class-consistency of N samples per row and a seed-noise row
(jobs/benches/toy_llamagen.py), at batch 50.

Options: model=llamagen_toy  batches=1,8  images=8 (per batch size and row; at least the batch)  reps=1
         threads=1  rows=<comma list of the names below>  quality=0
"""
from __future__ import annotations

import os
import statistics
from typing import Any

import torch

from jobs.benches.llamagen import tokens_only

TREE_SMALL = {"tree_tokens": 16, "tree_depth": 3, "tree_top_k": 4}
ROWS: dict[str, tuple[str, dict[str, Any]]] = {  # name: (accel, options); the chain drafter per model below
    "none": ("none", {}),
    "chain": ("speculative", {"gamma": 4}),
    "eagle": ("speculative", {"drafter": "eagle"}),
    "eagle_small_tree": ("speculative", {"drafter": "eagle", **TREE_SMALL}),
    "eagle_static": ("speculative", {"drafter": "eagle", "tree": "static"}),
    "lantern_eagle": ("lantern", {"drafter": "eagle", "lantern_delta": 0.1}),
    "lantern_eagle_small_tree": ("lantern", {"drafter": "eagle", "lantern_delta": 0.1, **TREE_SMALL}),
    "lantern++_static_l3": ("lantern", {"drafter": "eagle", "tree": "static", "lantern_lambda": 3.0}),
}
CHAIN_DRAFTER = {"llamagen_toy": "llamagen_toy_draft", "llamagen_b": "sjd"}
# LANTERN's k relative to the vocabulary: the release's 1000 of 16384 codes; the toy's 1024 codes take the
# toy table's k 10 (docs/BENCHMARKS.md: wider neighbourhoods cost the toy +18-21% FID)
LANTERN_K = {"llamagen_toy": 10, "llamagen_b": 1000}


def _options(model: str, name: str) -> tuple[str, dict[str, Any]]:
    accel, options = ROWS[name]
    if name == "chain":
        options = {**options, "drafter": CHAIN_DRAFTER[model]}
        if CHAIN_DRAFTER[model] == "sjd":
            options = {"drafter": "sjd", "window": 16}
    if accel == "lantern":
        options = {**options, "lantern_k": LANTERN_K[model]}
    return accel, options


def run(overrides: dict[str, str]) -> None:
    from accel.api import load_generator

    model = overrides.pop("model", "llamagen_toy")
    batches = [int(b) for b in overrides.pop("batches", "1,8").split(",")]
    images = int(overrides.pop("images", "8"))
    reps = int(overrides.pop("reps", "1"))
    torch.set_num_threads(int(overrides.pop("threads", "1")))
    names = overrides.pop("rows", ",".join(ROWS)).split(",")
    quality = int(overrides.pop("quality", "0"))
    if overrides:
        raise SystemExit(f"argen bench eagle: unknown option(s) {sorted(overrides)}")
    if model not in CHAIN_DRAFTER:
        raise SystemExit(f"argen bench eagle: model={model!r}; expected one of {', '.join(CHAIN_DRAFTER)}")
    bad = [n for n in names if n not in ROWS]
    if bad:
        raise SystemExit(f"argen bench eagle: unknown row(s) {bad}; known: {', '.join(ROWS)}")
    names = ["none"] + [n for n in names if n != "none"]
    random_init = model != "llamagen_toy"
    gens = {}
    for n in names:
        accel, options = _options(model, n)
        gens[n] = load_generator(model, accel=accel, device="cpu", random_init=random_init, **options)
    print(f"model={model}{' (random weights: speed mechanics only)' if random_init else ''} "
          f"torch_threads={torch.get_num_threads()} reps={reps} images={images} per batch size and row; "
          f"sampling cfg={gens['none'].opts.cfg} top_k={gens['none'].opts.top_k} "
          f"temperature={gens['none'].opts.temperature}; load average at start {os.getloadavg()[0]:.1f}\n")
    print("| row | batch | s/img | wall-clock vs none | target fwd/img | accepted length | tree nodes "
          "| drafting share | drafter fwd/img | GFLOPs/img | FLOPs vs none |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:  # warm-up: allocations, LANTERN's neighbour table
        tokens_only(gens[n], torch.tensor([0]), [0])
    for B in batches:
        calls = max(1, images // B)
        times: dict[str, list[float]] = {n: [] for n in names}
        counters: dict[str, list[dict]] = {n: [] for n in names}
        for rep in range(reps):
            for c in range(calls):
                seeds = [rep * 10_000 + c * B + i for i in range(B)]
                cond = torch.tensor([s % 10 for s in seeds])
                for n in names:
                    sec, cnt = tokens_only(gens[n], cond, seeds)
                    times[n].append(sec)
                    counters[n].append(cnt)
        base_t = sum(times["none"])
        base_flops = statistics.mean(c["flops"] for c in counters["none"])
        for n in names:
            cs = counters[n]
            mean = {k: statistics.mean(c.get(k, 0.0) for c in cs) for k in cs[0]}
            engine = mean.get("draft_seconds", 0.0) + mean.get("verify_seconds", 0.0)
            share = f"{mean['draft_seconds'] / engine:.0%}" if engine else "-"
            nodes = f"{mean['tree_nodes']:.0f}" if "tree_nodes" in mean else "-"
            print(f"| {n} | {B} | {sum(times[n]) / (calls * reps * B):.3f} | {base_t / sum(times[n]):.2f}x "
                  f"| {mean['target_forwards_per_image']:.1f} | {mean['accepted_length']:.2f} | {nodes} | {share} "
                  f"| {mean['drafter_forwards_per_image']:.1f} | {mean['flops'] / 1e9:.4f} "
                  f"| {base_flops / mean['flops']:.2f}x |", flush=True)
    if quality and not random_init:
        from jobs.benches.toy_llamagen import markdown, table_rows

        methods = [("none", "plain AR", "none", {})] + [(ROWS[n][0], n, *_options(model, n)) for n in names if n != "none"]
        print(f"\ntoy quality, {quality} samples per row (class i mod 10, seed i), batch 50; last row: plain AR on "
              f"other seeds (the seed noise)\n")
        print(markdown(table_rows(quality, batch_size=50, methods=methods)))
