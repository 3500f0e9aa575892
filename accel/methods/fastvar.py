"""FastVAR: cached token pruning for next-scale prediction (Guo et al., ICCV 2025, arXiv 2503.23367).

At the large scales most tokens have converged, so each pruned sub-layer computes only the "pivotal"
tokens and restores the rest from a cache:

- Pivotal token selection: before every sub-layer (attention, FFN) of a pruned block, each token of
  the residual stream is scored by its squared distance from the map's spatial mean (a high-frequency
  proxy); the top `n - int(n * ratio)` tokens are kept.
- Cached token restoration: at one earlier "cache scale" every pruned block stores its branch outputs
  (attention x gamma1, FFN x gamma2) for all tokens; at a pruned scale they are area-interpolated to the
  current size and the freshly computed kept tokens are written over them. The residual stream stays
  full length; only kept tokens enter the attention and so the KV cache.
- `skip_last_scales` (off by default) stops before the last scales altogether, as the upstream
  Infinity setting does for its two largest scales; the image is then decoded from the coarser latent.

CFG rows: upstream scores the conditional and unconditional rows separately, so a position may be fresh
in one branch and restored from the cache in the other. The guided logits (1 + t) * cond - t * uncond
then subtract estimates of different age, and the error is amplified by t (up to 1 + cfg). argen's
default `cfg_selection="shared"` ranks positions by the sum of both rows' scores and keeps the same
positions in both, so every position's guidance compares like with like; "independent" reproduces
upstream. Samples stay independent of their batch-mates either way (selection is per sample).

With every ratio 0 the hooks only record the cache and return the sub-layer's own output, so images are
bitwise identical to accel="none".
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from accel.errors import ArgenError
from accel.families.var import VARConfig
from accel.options import option_number
from accel.registry import Method
from accel.tokenizers.msvq import PATCH_NUMS_256, PATCH_NUMS_512

OPTION_NAMES = ("prune_ratios", "cache_scale", "layers", "skip_last_scales", "cfg_selection")

# Per schedule: fraction of tokens dropped at each pruned scale (keyed by the scale's side pn) and the
# scale whose branch outputs are cached. The last two scales are pruned, as in the released HART
# setting (50% and 75%), with the cache at the scale before them.
DEFAULTS: dict[tuple[int, ...], dict[str, Any]] = {
    PATCH_NUMS_256: {"prune_ratios": {13: 0.5, 16: 0.75}, "cache_scale": 10},
    PATCH_NUMS_512: {"prune_ratios": {24: 0.5, 32: 0.75}, "cache_scale": 18},
}


def pivotal_token_indices(x: torch.Tensor, keep: int, shared_cfg_halves: bool) -> torch.Tensor:
    """x [rows, n, C] -> indices [rows, keep] of the tokens farthest from the spatial mean (ascending)."""
    score = (x - x.mean(dim=1, keepdim=True)).square().sum(dim=-1)  # [rows, n]
    if shared_cfg_halves:
        half = score.shape[0] // 2
        idx = (score[:half] + score[half:]).topk(keep, dim=1).indices
        idx = torch.cat((idx, idx))
    else:
        idx = score.topk(keep, dim=1).indices
    return idx.sort(dim=1).values


def kept_count(n: int, ratio: float) -> int:
    """Tokens a sub-layer computes out of n when the fraction `ratio` is dropped (upstream: n - int(n * ratio))."""
    return n - int(n * ratio)


def restore_from_cache(kept_out: torch.Tensor, idx: torch.Tensor, cached: torch.Tensor, cached_side: int,
                       side: int) -> torch.Tensor:
    """Area-interpolate a cached branch output [rows, s*s, C] to side x side, write the kept outputs over it."""
    rows, _, C = cached.shape
    grid = cached.view(rows, cached_side, cached_side, C).permute(0, 3, 1, 2)
    full = F.interpolate(grid, size=(side, side), mode="area").permute(0, 2, 3, 1).reshape(rows, side * side, C)
    full = full.to(kept_out.dtype)
    return full.scatter_(1, idx.unsqueeze(-1).expand(-1, -1, C), kept_out)


class FastVAR:
    """Validated FastVAR settings for one model; `start()` gives the per-generate() state."""

    def __init__(self, patch_nums: Sequence[int], depth: int, prune_ratios: Mapping | Sequence | None = None,
                 cache_scale: int | None = None, layers: Sequence[int] | None = None, skip_last_scales: int = 0,
                 cfg_selection: str = "shared"):
        self.patch_nums, self.depth = tuple(patch_nums), depth
        S = len(self.patch_nums)
        defaults = DEFAULTS.get(self.patch_nums)
        if prune_ratios is None:
            if defaults is None:
                raise ArgenError(f"no default FastVAR ratios for the scale schedule {self.patch_nums}; "
                                 f"pass prune_ratios={{side: fraction}} and cache_scale")
            prune_ratios = defaults["prune_ratios"]
            cache_scale = defaults["cache_scale"] if cache_scale is None else cache_scale
        self.ratios = self._ratios_per_scale(prune_ratios)
        pruned = [i for i, r in enumerate(self.ratios) if r > 0]
        if pruned:
            if cache_scale is None:
                cache_scale = (defaults or {}).get("cache_scale")
            if cache_scale is None or int(cache_scale) not in self.patch_nums:
                raise ArgenError(f"cache_scale={cache_scale} is not a scale of the schedule {self.patch_nums}; "
                                 f"pass the side of an earlier scale, e.g. cache_scale={self.patch_nums[pruned[0] - 1]}")
            self.cache_si = self.patch_nums.index(int(cache_scale))
            late = [self.patch_nums[i] for i in pruned if i <= self.cache_si]
            if late:
                raise ArgenError(f"scales {late} are pruned but not after cache_scale={cache_scale}; the cached "
                                 f"branch outputs must come from an earlier scale")
        else:
            self.cache_si = None
        if layers is None:
            self.layers = range(depth)
        else:
            if isinstance(layers, (str, Mapping)) or not isinstance(layers, Sequence) or len(layers) != 2:
                raise ArgenError(f"layers={layers!r} is not a block range; pass [start, end), e.g. layers=[0,{depth}] "
                                 f"for every block")
            start, end = (option_number("layers", v, int, f"[0,{depth}]") for v in layers)
            if not 0 <= start < end <= depth:
                raise ArgenError(f"layers={list(layers)} is not a block range [start, end) within [0, {depth}]")
            self.layers = range(start, end)
        self.skip_last_scales = option_number("skip_last_scales", skip_last_scales, int, "2")
        if not 0 <= self.skip_last_scales < S:
            raise ArgenError(f"skip_last_scales={skip_last_scales} must be in [0, {S - 1}] for {S} scales")
        if cfg_selection not in ("shared", "independent"):
            raise ArgenError(f"cfg_selection={cfg_selection!r}; expected 'shared' (default: both CFG rows keep the "
                             f"same positions) or 'independent' (upstream: each row chooses its own)")
        self.cfg_selection = cfg_selection
        self.num_scales = S - self.skip_last_scales

    def _ratios_per_scale(self, prune_ratios: Mapping | Sequence) -> list[float]:
        S = len(self.patch_nums)
        example = f"{{{self.patch_nums[-2]}: 0.5, {self.patch_nums[-1]}: 0.75}}"
        if isinstance(prune_ratios, Mapping):
            ratios = [0.0] * S
            for side, r in prune_ratios.items():
                side = option_number("a prune_ratios key", side, int, example)
                if side not in self.patch_nums:
                    raise ArgenError(f"prune_ratios names scale {side}, which is not in the schedule {self.patch_nums}; "
                                     f"key the ratios by a scale's side")
                ratios[self.patch_nums.index(side)] = option_number(f"prune_ratios[{side}]", r, float, "0.5")
        elif isinstance(prune_ratios, Sequence) and not isinstance(prune_ratios, str):
            ratios = [option_number("prune_ratios", r, float, example) for r in prune_ratios]
        else:
            raise ArgenError(f"prune_ratios={prune_ratios!r}: expected a mapping {{side: fraction dropped}}, e.g. "
                             f"prune_ratios={example}, or one fraction per scale ({S})")
        if len(ratios) != S:
            raise ArgenError(f"prune_ratios has {len(ratios)} entries; give one per scale ({S}) or a mapping "
                             f"{{side: fraction}}")
        for side, r in zip(self.patch_nums, ratios):
            if not 0 <= r < 1:
                raise ArgenError(f"prune ratio {r} at scale {side} is outside [0, 1); it is the fraction of tokens dropped")
        return ratios

    def options(self) -> dict[str, Any]:
        return {"prune_ratios": {p: r for p, r in zip(self.patch_nums, self.ratios) if r > 0},
                "cache_scale": None if self.cache_si is None else self.patch_nums[self.cache_si],
                "layers": [self.layers.start, self.layers.stop], "skip_last_scales": self.skip_last_scales,
                "cfg_selection": self.cfg_selection}

    def start(self, batch_rows: int) -> "FastVARRun":
        return FastVARRun(self, batch_rows)


class FastVARRun:
    """State of one generate() call: the cached branch outputs and the pruning counters."""

    def __init__(self, cfg: FastVAR, batch_rows: int):
        self.cfg, self.batch_rows = cfg, batch_rows
        self.num_scales = cfg.num_scales
        self.cache: dict[tuple[int, str], torch.Tensor] = {}
        self.dropped = [0] * len(cfg.patch_nums)  # token-branch computations skipped, per scale

    def begin_scale(self, si: int, pn: int) -> "ScaleTokens | None":
        ratio = self.cfg.ratios[si]
        if ratio == 0 and si != self.cfg.cache_si:
            return None
        keep = kept_count(pn * pn, ratio) if ratio > 0 else None
        return ScaleTokens(self, si, pn, keep)

    def stats(self) -> dict[str, Any]:
        kept = {}
        for si, pn in enumerate(self.cfg.patch_nums):
            total = pn * pn * self.cfg.depth * 2 * self.batch_rows  # tokens x blocks x (attn, ffn) x rows
            kept[str(pn)] = 0.0 if si >= self.num_scales else 1.0 - self.dropped[si] / total
        n = {str(pn): pn * pn for pn in self.cfg.patch_nums}
        mean = sum(kept[k] * n[k] for k in kept) / sum(n.values())
        return {"kept_token_fraction": kept, "kept_token_fraction_mean": mean, "scales_run": self.num_scales}


class ScaleTokens:
    def __init__(self, run: FastVARRun, si: int, pn: int, keep: int | None):
        self.run, self.si, self.pn, self.keep = run, si, pn, keep

    def block(self, i: int) -> "BlockTokens | None":
        return BlockTokens(self, i) if i in self.run.cfg.layers else None


class BlockTokens:
    """The TokenHook of one block at one scale (accel.families.var.hooks.TokenHook)."""

    def __init__(self, scale: ScaleTokens, block: int):
        self.scale, self.block_idx = scale, block

    def branch(self, name: str, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        s, run = self.scale, self.scale.run
        if s.keep is None:  # the cache scale: compute everything, remember it
            out = fn(x)
            run.cache[(self.block_idx, name)] = out
            return out
        idx = pivotal_token_indices(x, s.keep, run.cfg.cfg_selection == "shared")
        kept_out = fn(torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])))
        run.dropped[s.si] += (x.shape[1] - s.keep) * x.shape[0]
        cache_side = run.cfg.patch_nums[run.cfg.cache_si]
        return restore_from_cache(kept_out, idx, run.cache[(self.block_idx, name)], cache_side, s.pn)


def check(name: str, *, config: VARConfig, options: dict[str, Any]) -> FastVAR:
    """The settings for one VAR model: its scale schedule and depth fix the defaults and the valid values."""
    return FastVAR(config.patch_nums, config.depth, **options)


METHODS = (Method(name="fastvar", family="var", option_names=OPTION_NAMES, check=check),)
