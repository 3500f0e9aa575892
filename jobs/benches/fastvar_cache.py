"""`argen bench fastvar_cache`: how well each earlier scale's cached branch outputs stand in for the
pruned ones, per FastVAR cache scale, without generating a FID set.

FastVAR restores every token a pruned sub-layer does not compute from the branch output (attention x
gamma1, FFN x gamma2) that the same block produced at the cache scale, area-interpolated to the current
size (accel/methods/fastvar.py). This bench runs the baseline (accel=none) and records, at every scale,
every block's sub-layer inputs and branch outputs. Then, for each pruned scale and each candidate cache
scale, it restores the tokens that FastVAR's pivotal selection would drop (same ratio, same score, the
same shared CFG selection) from that cache scale and compares them with the outputs the full computation
gave there:

  relative error   sqrt(sum |restored - full|^2 / sum |full|^2) over the dropped tokens, per block and
                   branch; the table gives the mean over blocks and branches and the worst one
  vs stream        sqrt(sum |restored - full|^2 / sum |x|^2): the same error against the residual stream it
                   is added to (what the next sub-layers see)

Both are first-order: every sub-layer's input is the full computation's, not the pruned run's (whose errors
compound through the blocks), and the kept tokens count as exact, while in FastVAR their attention sees
only the kept tokens of the scale. The end-to-end effect, per pruned scale:

  KL per token     FastVAR pruning only that scale (all earlier scales run in full, so the prefix is the
                   baseline's): KL(baseline || FastVAR) of that scale's guided next-token distributions
  same tokens      the fraction of that scale's tokens sampled as in the baseline (same seeds: identical
                   distributions draw identical tokens)

docs/BENCHMARKS.md compares these with the FIDs that each cache scale gives on var_toy.

Options: model=var_toy samples=200 batch=50 cache_scales=2,4,6,8,10,13 seed_offset=0
  prune_ratios={13:0.5,16:0.75} (default: the schedule's FastVAR defaults)  cfg=, top_p= (default: the model's)
Samples: class i mod num_classes, seed seed_offset + i (seed_offset=0: the toy table's seeds).
"""
from __future__ import annotations

import ast
from typing import Any, Callable, Sequence

import torch

from accel.api import ArgenError
from accel.methods.fastvar import DEFAULTS, FastVAR, kept_count, pivotal_token_indices, restore_from_cache


class BranchRecorder:
    """Token hooks for VAR.autoregressive_infer_cfg that compute every sub-layer in full and keep, per scale
    side, block and branch, the sub-layer input x and the branch output (detached, on the CPU)."""

    def __init__(self) -> None:
        self.records: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def start(self, batch_rows: int) -> "BranchRecorder":
        """Forget the previous call's records (the same interface as FastVAR.start)."""
        self.records = {}
        return self

    def begin_scale(self, si: int, pn: int) -> "_ScaleRecorder":
        return _ScaleRecorder(self, pn)


class _ScaleRecorder:
    def __init__(self, rec: BranchRecorder, pn: int):
        self.rec, self.pn = rec, pn

    def block(self, i: int) -> "_BlockRecorder":
        return _BlockRecorder(self, i)


class _BlockRecorder:
    def __init__(self, scale: _ScaleRecorder, i: int):
        self.scale, self.i = scale, i

    def branch(self, name: str, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = fn(x)
        self.scale.rec.records[(self.scale.pn, self.i, name)] = (x.detach().float().cpu(), out.detach().float().cpu())
        return out


def restore_dropped(full_out: torch.Tensor, x: torch.Tensor, keep: int, cached_out: torch.Tensor,
                    cached_side: int, side: int, shared_cfg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """What FastVAR would output for one sub-layer, given the full computation's input x and output
    full_out [rows, side*side, C] and the cache scale's output cached_out [rows, cached_side^2, C]: the kept
    tokens exact, the rest area-interpolated from the cache (FastVAR's own restore_from_cache). Returns
    (restored, dropped mask [rows, side^2])."""
    idx = pivotal_token_indices(x, keep, shared_cfg)
    kept_out = torch.gather(full_out, 1, idx.unsqueeze(-1).expand(-1, -1, full_out.shape[-1]))
    restored = restore_from_cache(kept_out, idx, cached_out, cached_side, side)
    dropped = torch.ones(idx.shape[0], side * side, dtype=torch.bool).scatter_(1, idx, False)
    return restored, dropped


def restoration_errors(records: dict, prune_ratios: dict[int, float], cache_scales: Sequence[int]
                       ) -> dict[tuple[int, int, int, str], tuple[float, float, float]]:
    """(pruned side, cache side, block, branch) -> (sum |restored - full|^2, sum |full|^2, sum |x|^2) over
    the dropped tokens of one batch's records, for every cache side smaller than the pruned side."""
    sums = {}
    for (pn, i, name), (x, out) in records.items():
        ratio = prune_ratios.get(pn, 0.0)
        if ratio <= 0:
            continue
        keep = kept_count(pn * pn, ratio)
        for c in cache_scales:
            if c >= pn or (c, i, name) not in records:
                continue
            restored, dropped = restore_dropped(out, x, keep, records[(c, i, name)][1], c, pn)
            m = dropped.unsqueeze(-1)
            sums[(pn, c, i, name)] = ((restored - out).square().mul(m).sum().item(), out.square().mul(m).sum().item(),
                                      x.square().mul(m).sum().item())
    return sums


def measure(model: str, samples: int, batch: int, cache_scales: Sequence[int],
            prune_ratios: dict[int, float] | None, seed_offset: int = 0, device: str = "cpu",
            sampling: dict[str, Any] | None = None
            ) -> tuple[dict[tuple[int, int, int, str], list[float]], dict[tuple[int, int], list[float]], dict[int, float]]:
    """On `samples` samples of `model`: the summed first-order restoration errors of the baseline run (see
    restoration_errors), and per (pruned side, cache side) the end-to-end effect on that scale's
    distribution: FastVAR pruning only that scale, whose prefix (every earlier scale) is then the baseline's,
    summed over its tokens: KL(baseline || FastVAR) of the guided next-token distributions, and the number
    of tokens sampled the same (same seeds, so identical distributions draw identical tokens), and the
    token count. `sampling` overrides the model's sampling defaults (e.g. {"cfg": 1.5}) in every run. Also
    returns the prune ratios used."""
    from accel.api import load_generator, seeded_generators

    sampling = dict(sampling or {})
    base = load_generator(model, accel="none", device=device, **sampling)
    patch_nums = tuple(base.cfg.patch_nums)
    if prune_ratios is None:
        if patch_nums not in DEFAULTS:
            raise ArgenError(f"{model}'s schedule {patch_nums} has no FastVAR defaults; pass prune_ratios={{side: fraction}}")
        prune_ratios = dict(DEFAULTS[patch_nums]["prune_ratios"])
    bad = [s for s in list(cache_scales) + list(prune_ratios) if s not in patch_nums]
    if bad:
        raise ArgenError(f"scales {bad} are not in {model}'s schedule {patch_nums}; name scales by their side")
    pairs = [(pn, c) for pn in sorted(prune_ratios) if prune_ratios[pn] > 0 for c in cache_scales if c < pn]
    # one set of weights: each pair is a FastVAR method run on the baseline's model (its hooks are per run)
    fast = {(pn, c): FastVAR(patch_nums, base.cfg.depth, prune_ratios={pn: prune_ratios[pn]}, cache_scale=c)
            for pn, c in pairs}
    recorder = BranchRecorder()
    first_order: dict[tuple[int, int, int, str], list[float]] = {}
    end_to_end = {pair: [0.0, 0.0, 0.0] for pair in pairs}
    for start in range(0, samples, batch):
        idx = range(start, min(samples, start + batch))
        labels = torch.tensor([i % base.num_classes for i in idx], device=base.device)
        seeds = [seed_offset + i for i in idx]
        base_record: dict[str, list] = {}
        with torch.no_grad():
            base.model.autoregressive_infer_cfg(base.vae.quantize, labels, seeded_generators(seeds, base.device),
                                                **base.sampling, token_hooks=recorder.start(2 * len(seeds)),
                                                record=base_record)
        for key, vals in restoration_errors(recorder.records, prune_ratios, cache_scales).items():
            acc = first_order.setdefault(key, [0.0, 0.0, 0.0])
            for j, v in enumerate(vals):
                acc[j] += v
        for (pn, c), method in fast.items():
            record: dict[str, list] = {}
            with torch.no_grad():
                base.model.autoregressive_infer_cfg(base.vae.quantize, labels, seeded_generators(seeds, base.device),
                                                    **base.sampling, token_hooks=method.start(2 * len(seeds)),
                                                    record=record)
            si = patch_nums.index(pn)
            logp = base_record["logits"][si].float().log_softmax(-1)
            logq = record["logits"][si].float().log_softmax(-1)
            acc = end_to_end[(pn, c)]
            acc[0] += (logp.exp() * (logp - logq)).sum().item()
            acc[1] += (base_record["idx_Bl"][si] == record["idx_Bl"][si]).sum().item()
            acc[2] += record["idx_Bl"][si].numel()
    return first_order, end_to_end, prune_ratios


def summary(totals: dict[tuple[int, int, int, str], list[float]], end_to_end: dict[tuple[int, int], list[float]]
            ) -> list[dict[str, Any]]:
    """One row per (pruned side, cache side): mean and worst relative error over blocks and branches, the
    error against the residual stream (all blocks and branches pooled), the mean KL per token and the
    fraction of tokens sampled as in the baseline."""
    rows = []
    for pn, c in sorted({(k[0], k[1]) for k in totals}):
        parts = {(i, name): v for (p, cc, i, name), v in totals.items() if (p, cc) == (pn, c)}
        rel = {k: (e / max(f, 1e-30)) ** 0.5 for k, (e, f, _) in parts.items()}
        worst = max(rel, key=rel.get)
        err, stream = sum(v[0] for v in parts.values()), sum(v[2] for v in parts.values())
        rows.append({"pruned": pn, "cache": c, "mean_rel_error": sum(rel.values()) / len(rel),
                     "worst_rel_error": rel[worst], "worst": f"block {worst[0]} {worst[1]}",
                     "error_vs_stream": (err / max(stream, 1e-30)) ** 0.5,
                     "kl_per_token": end_to_end[(pn, c)][0] / end_to_end[(pn, c)][2],
                     "same_tokens": end_to_end[(pn, c)][1] / end_to_end[(pn, c)][2]})
    return rows


def run(overrides: dict[str, str]) -> None:
    model = overrides.pop("model", "var_toy")
    samples, batch = int(overrides.pop("samples", 200)), int(overrides.pop("batch", 50))
    cache_scales = [int(s) for s in overrides.pop("cache_scales", "2,4,6,8,10,13").split(",")]
    seed_offset = int(overrides.pop("seed_offset", 0))
    ratios = overrides.pop("prune_ratios", None)
    sampling = {k: float(overrides.pop(k)) for k in ("cfg", "top_p") if k in overrides}
    prune_ratios = {int(k): float(v) for k, v in ast.literal_eval(ratios).items()} if ratios else None
    if overrides:
        raise SystemExit(f"argen bench fastvar_cache: unknown option(s) {sorted(overrides)}; known: model, samples, "
                         f"batch, cache_scales, seed_offset, prune_ratios, cfg, top_p")
    totals, end_to_end, prune_ratios = measure(model, samples, batch, cache_scales, prune_ratios, seed_offset,
                                               sampling=sampling)
    print(f"{model}, accel=none, sampling {sampling or 'defaults'}: {samples} samples (class i mod classes, seed {seed_offset} + i); tokens FastVAR "
          f"would drop at prune ratios {prune_ratios}, restored from each cache scale's branch outputs\n")
    print("| pruned scale | cache scale | relative error, mean over blocks x branches | worst | worst at "
          "| error vs residual stream | KL per token (that scale only pruned) | tokens sampled as baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for r in summary(totals, end_to_end):
        print(f"| {r['pruned']} | {r['cache']} | {r['mean_rel_error']:.3f} | {r['worst_rel_error']:.3f} | {r['worst']} "
              f"| {r['error_vs_stream']:.3f} | {r['kl_per_token']:.4f} | {r['same_tokens']:.3f} |", flush=True)
