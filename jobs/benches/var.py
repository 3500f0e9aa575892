"""`argen bench var`: accel=none vs fastvar, wall-clock and FLOPs ratios measured in one run.

Both generators share identical (seeded random) weights and the same seeds, so the mean absolute pixel
difference says how far FastVAR moves each image from its baseline. Random weights say nothing about
quality; trained toy models come with the toy-model issue.

Options (key=value): models=tiny,tiny_512,d16,d16_512  batches=1,16  skip=d16:16,d16_512:16  reps=2  device=cpu
  (skip: setup:batch pairs left out; d16 at batch 16 takes hours on a 2-core CPU)
  tiny / tiny_512: var_tiny on the 256 / 512-px schedule; d16 / d16_512: var_d16's width and depth
  (random weights) on either schedule, decoded with the narrow test VAE (the VAE is not what FastVAR
  accelerates; its FLOPs are reported separately). fastvar options: any FastVAR option, e.g.
  prune_ratios={13:0.5,16:0.75} (default: the schedule's defaults).
"""
from __future__ import annotations

import ast
import statistics

import numpy as np
import torch

from accel.families.var import config_with, make_generator
from accel.tokenizers.msvq import PATCH_NUMS_512

SETUPS = {
    "tiny": ("var_tiny", {}),
    "tiny_512": ("var_tiny_512", {}),
    "d16": ("var_d16", {"tokenizer": "var_vqvae_tiny"}),
    "d16_512": ("var_d16", {"tokenizer": "var_vqvae_tiny", "patch_nums": PATCH_NUMS_512}),
}


def _interleaved(base, fast, conds, seeds, reps):
    """Median seconds of each method, alternating runs so that machine noise hits both alike."""
    tb, tf = [], []
    for _ in range(reps):
        ob = base.generate(conds, seeds=seeds)
        of = fast.generate(conds, seeds=seeds)
        tb.append(ob.stats["seconds"])
        tf.append(of.stats["seconds"])
    return statistics.median(tb), statistics.median(tf), ob, of


def run(overrides: dict[str, str]) -> None:
    setups = overrides.pop("models", "tiny,tiny_512,d16,d16_512").split(",")
    batches = [int(b) for b in overrides.pop("batches", "1,16").split(",")]
    reps = int(overrides.pop("reps", "2"))
    skip = set(overrides.pop("skip", "d16:16,d16_512:16").split(","))
    device = torch.device(overrides.pop("device", "cpu"))
    method_options = {k: ast.literal_eval(v) if v[:1] in "{[0123456789" else v for k, v in overrides.items()}
    print(f"device={device} torch_threads={torch.get_num_threads()} reps={reps} (median) "
          f"fastvar options={method_options or 'schedule defaults'}\n")
    print("| setup | schedule | batch | none s/img | fastvar s/img | wall-clock ratio | transformer FLOPs ratio "
          "| total FLOPs ratio | GFLOPs/img none -> fastvar | mean abs pixel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setup in setups:
        name, changes = SETUPS[setup]
        cfg = config_with(name, **changes)
        base = make_generator(name, accel="none", device=device, random_init=True, config=cfg)
        fast = make_generator(name, accel="fastvar", device=device, random_init=True, config=cfg, **method_options)
        base.generate([0], seeds=[0])  # warm-up
        fast.generate([0], seeds=[0])
        for B in batches:
            if f"{setup}:{B}" in skip:
                continue
            conds, seeds = [(37 * i) % 1000 for i in range(B)], list(range(B))
            tb, tf, ob, of = _interleaved(base, fast, conds, seeds, reps)
            diff = np.abs(ob.images.astype(np.int16) - of.images.astype(np.int16)).mean()
            s = ob.stats, of.stats
            print(f"| {setup} | {cfg.patch_nums[-1] * 16}px | {B} | {tb / B:.3f} | {tf / B:.3f} | {tb / tf:.2f}x "
                  f"| {s[0]['flops_transformer'] / s[1]['flops_transformer']:.2f}x "
                  f"| {s[0]['flops'] / s[1]['flops']:.2f}x "
                  f"| {s[0]['flops'] / 1e9:.1f} -> {s[1]['flops'] / 1e9:.1f} | {diff:.2f} |", flush=True)
