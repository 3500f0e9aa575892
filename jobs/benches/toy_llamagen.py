"""LlamaGen toy rows of the quality-vs-speed table: plain AR vs exact speculative (drafter
llamagen_toy_draft) vs LANTERN (a few k / delta) vs SJD, on the trained llamagen_toy.

`table_rows(n)` runs every method on the same n class-balanced conditions (class i mod 10) and seeds
(i), batch by batch with the methods interleaved inside each batch (jobs/benches/toy.py:
toy_quality_interleaved), so that load from other processes on the machine hits every method alike. Per
method it scores the images as jobs/benches/toy.py:toy_quality
does (toy FID against ToyShapes reference statistics with the trained toy classifier, class-consistency)
and reports, against plain AR:

  wall_clock_ratio   plain AR seconds / method seconds (> 1: faster), whole generate() calls (tokens and
                     the VQ decoder); the sum over batches
  flops_ratio        plain AR FLOPs / method FLOPs per image (> 1: cheaper), analytic, target + drafter +
                     VQ decoder (the decoder is the same for every method)
  target_forwards_per_image, target_forward_ratio (plain / method), accepted_length (tokens per
  verification step), acceptance_rate, drafter_forwards_per_image, fid_change (fid / plain fid - 1)

The last row is plain AR again on other seeds: the seed noise of fid_change and of the wall-clock ratio.

The sampling settings are the model's defaults (accel/families/llamagen/configs.py CONFIGS["llamagen_toy"]) for every
method, so exact speculative decoding samples the same distribution as plain AR.

`argen bench toy` (jobs/benches/toy.py) calls table_rows(); `python -m jobs.benches.toy_llamagen n=2000`
prints this part alone as a markdown table (state=DIR: keep finished batches there and go on from them).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch

MODEL = "llamagen_toy"
DRAFTER = "llamagen_toy_draft"
# (method, setting, accel, options); the first row is the baseline
METHODS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("none", "plain AR", "none", {}),
    ("speculative", "drafter llamagen_toy_draft, gamma 4", "speculative", {"drafter": DRAFTER, "gamma": 4}),
    ("lantern", "k 10, delta 0.1, gamma 4", "lantern", {"drafter": DRAFTER, "gamma": 4, "lantern_k": 10, "lantern_delta": 0.1}),
    # the two that met LANTERN's aim (>= 2x fewer target forwards within +5% FID) in a 2,000-sample sweep;
    # the wider ones (k 10 / delta 0.05, k 5 / delta 0.02, k 100 / delta 0.4) cost +18-21% at 1,000 samples
    # (docs/BENCHMARKS.md) and are left out of the table to keep its 10,000-sample run within ~1.5 h
    ("lantern", "k 3, delta 0.2, gamma 4", "lantern", {"drafter": DRAFTER, "gamma": 4, "lantern_k": 3, "lantern_delta": 0.2}),
    ("lantern", "k 2, delta 0.05, gamma 4", "lantern", {"drafter": DRAFTER, "gamma": 4, "lantern_k": 2, "lantern_delta": 0.05}),
    ("sjd", "window 16, random init", "sjd", {"window": 16}),
]
COUNTERS = ("target_forwards_per_image", "accepted_length", "acceptance_rate", "drafter_forwards_per_image")


def table_rows(n: int, batch_size: int = 250, methods: list[tuple[str, str, str, dict]] | None = None,
               device: str = "cpu", state_dir: str | None = None) -> list[dict]:
    """One dict per method (keys: family, method, setting, fid, class_consistency, wall_clock_ratio,
    flops_ratio, plus counters); the first is plain AR, the baseline of the ratios."""
    from jobs.benches.toy import SEED_NOISE_SETTING, toy_quality_with_seed_noise, warm_generators

    methods = list(METHODS if methods is None else methods)
    if not methods or methods[0][2] != "none":
        raise ValueError(f"the first method must be plain AR (accel='none'), the baseline; got {methods[:1]}")
    if n < 10:
        raise ValueError(f"n={n}: pass at least 10 samples (one per class)")
    options = [{"accel": a, **o} for _, _, a, o in methods]
    gens = warm_generators(MODEL, options, device)
    results = toy_quality_with_seed_noise(gens, n, batch_size, state_dir, options)  # last: plain AR on other seeds
    methods.append(("none", SEED_NOISE_SETTING, "none", {}))
    base = results[0]
    load = os.getloadavg()[0]
    rows = []
    for (method, setting, _, _), g, q in zip(methods, gens + gens[:1], results):
        rows.append({
            "family": "llamagen", "model": MODEL, "method": method, "setting": setting,
            "fid": q["fid"], "class_consistency": q["class_consistency"], "samples": n,
            "seconds_per_image": q["generate_seconds"] / n, "flops_per_image": q["flops_per_image"],
            **{k: q[k] for k in COUNTERS if k in q},
            "wall_clock_ratio": base["generate_seconds"] / q["generate_seconds"],
            "flops_ratio": base["flops_per_image"] / q["flops_per_image"],
            "target_forward_ratio": base["target_forwards_per_image"] / q["target_forwards_per_image"],
            "fid_change": q["fid"] / base["fid"] - 1.0, "load_avg_1min_at_end": load,
            "torch_threads": torch.get_num_threads(),
            "sampling": {"cfg": g.opts.cfg, "top_k": g.opts.top_k, "temperature": g.opts.temperature},
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| method | setting | toy FID | FID vs plain | class-consistency | wall-clock ratio | FLOPs ratio "
             "| target fwd/img | target fwd ratio | accepted length | drafter fwd/img |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['setting']} | {r['fid']:.2f} | {100 * r['fid_change']:+.1f}% "
                     f"| {r['class_consistency']:.3f} | {r['wall_clock_ratio']:.2f}x | {r['flops_ratio']:.2f}x "
                     f"| {r['target_forwards_per_image']:.1f} | {r['target_forward_ratio']:.2f}x "
                     f"| {r['accepted_length']:.2f} | {r['drafter_forwards_per_image']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    n, batch = int(opts.pop("n", 2000)), int(opts.pop("batch", 250))
    torch.set_num_threads(int(opts.pop("threads", 1)))
    state = opts.pop("state", None)
    if opts:
        raise SystemExit(f"python -m jobs.benches.toy_llamagen: unknown option(s) {sorted(opts)}; known: n, batch, "
                         f"threads, state")
    t0 = time.perf_counter()
    rows = table_rows(n, batch_size=batch, state_dir=state)
    r0 = rows[0]
    print(f"model={MODEL} drafter={DRAFTER} samples={n} per method (class i mod 10, seed i) batch={batch} "
          f"torch_threads={r0['torch_threads']} sampling={r0['sampling']} "
          f"load average (1 min, at the end)={r0['load_avg_1min_at_end']:.1f} on {os.cpu_count()} cores, "
          f"total {time.perf_counter() - t0:.0f} s\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
