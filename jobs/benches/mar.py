"""`argen bench mar`: accel=none vs lazymar, FLOPs and wall-clock ratios measured in one run.

Both generators hold identical seeded random weights and get the same classes and seeds; runs alternate
(none, lazymar, none, ...) so machine noise hits both alike, and the median of `reps` runs is reported.
Random weights say nothing about quality; the mean absolute pixel difference only shows how far the
caches move each image.

Options (key=value):
  models=tiny,base    tiny = mar_tiny; base = mar_base's widths and depths (random weights, full KL-16 VAE)
  batches=1,16  reps=1  device=auto  threads=<torch default>  num_iter=64  num_sampling_steps=100
  cfg=<model default>
  skip=base:16        setup:batch pairs not to run (default on CPU: base:16, hours there; skip= runs all)
  any LazyMAR option, e.g. refresh_interval=9 retain_schedule=[[0,1.0],[0.5,0.1]] (default: upstream's)
FLOPs are analytic (accel/flops.py); "MAR" FLOPs leave out the VAE decode, "total" includes it.
"""
from __future__ import annotations

import ast
import statistics

import numpy as np
import torch

from accel.api import load_generator, resolve_device

SETUPS = {"tiny": "mar_tiny", "base": "mar_base"}


def _value(v: str):
    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


def _warm_up(gen) -> None:
    saved = gen.num_iter, gen.num_sampling_steps
    gen.num_iter, gen.num_sampling_steps = 2, 2
    try:
        gen.generate([0], seeds=[0])
    finally:
        gen.num_iter, gen.num_sampling_steps = saved


def run(overrides: dict[str, str]) -> None:
    overrides = dict(overrides)
    setups = overrides.pop("models", "tiny,base").split(",")
    batches = [int(b) for b in overrides.pop("batches", "1,16").split(",")]
    reps = int(overrides.pop("reps", "1"))
    device = resolve_device(overrides.pop("device", "auto"))
    default_skip = "base:16" if device.type == "cpu" else ""  # about 2.5 hours of a 2-core CPU
    skip = {tuple(s.split(":")) for s in overrides.pop("skip", default_skip).split(",") if s}
    if "threads" in overrides:
        torch.set_num_threads(int(overrides.pop("threads")))
    sampling = {k: _value(overrides.pop(k)) for k in ("num_iter", "num_sampling_steps", "cfg") if k in overrides}
    sampling.setdefault("num_iter", 64)
    method_options = {k: _value(v) for k, v in overrides.items()}
    print(f"device={device} torch_threads={torch.get_num_threads()} reps={reps} (median) sampling={sampling} "
          f"lazymar options={method_options or 'upstream defaults'}\n")
    print("| setup | batch | none s/img | lazymar s/img | wall-clock ratio | MAR FLOPs ratio | total FLOPs ratio "
          "| TFLOPs/img none -> lazymar | full steps | recomputed: enc / dec<sel / dec>=sel | head full timesteps "
          "| mean abs pixel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    parts = []
    for setup in setups:
        name = SETUPS[setup]
        base = load_generator(name, accel="none", device=device, random_init=True, **sampling)
        lazy = load_generator(name, accel="lazymar", device=device, random_init=True, **sampling, **method_options)
        _warm_up(base)
        _warm_up(lazy)
        for B in batches:
            if (setup, str(B)) in skip:
                continue
            conds, seeds = [(37 * i) % 1000 for i in range(B)], list(range(B))
            tb, tl = [], []
            for _ in range(reps):
                ob = base.generate(conds, seeds=seeds)
                ol = lazy.generate(conds, seeds=seeds)
                tb.append(ob.stats["seconds"])
                tl.append(ol.stats["seconds"])
            tb, tl = statistics.median(tb), statistics.median(tl)
            sb, sl = ob.stats, ol.stats
            mar_b, mar_l = sb["flops"] - sb["flops_tokenizer"], sl["flops"] - sl["flops_tokenizer"]
            diff = np.abs(ob.images.astype(np.int16) - ol.images.astype(np.int16)).mean()
            rec = " / ".join(f"{sl[f'recomputed_fraction_{g}']:.2f}" for g in ("encoder", "decoder_early", "decoder_late"))
            head = f"{sl['head_full_timesteps']}/{sl['head_timesteps']}" if "head_timesteps" in sl else "-"
            print(f"| {setup} ({name}) | {B} | {tb / B:.3f} | {tl / B:.3f} | {tb / tl:.2f}x | {mar_b / mar_l:.2f}x "
                  f"| {sb['flops'] / sl['flops']:.2f}x | {sb['flops'] / 1e12:.2f} -> {sl['flops'] / 1e12:.2f} "
                  f"| {sl['full_steps']}/{sl['steps']} | {rec} | {head} | {diff:.2f} |", flush=True)
            if B == batches[0]:
                parts.append(f"| {setup} | " + " | ".join(
                    f"{sb.get('flops_' + c, 0) / 1e12:.3f} -> {sl.get('flops_' + c, 0) / 1e12:.3f}"
                    for c in ("encoder", "decoder", "head", "embed", "lazymar", "tokenizer")) + " |")
    print("\nTFLOPs per image by component, none -> lazymar (the same at every batch size):\n")
    print("| setup | encoder | decoder | head | embeddings | lazymar selection | VAE decode |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(parts))
