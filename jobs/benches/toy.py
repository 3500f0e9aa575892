"""Toy quality: FID and class-consistency of a toy generator against ToyShapes, with the toy classifier.

`toy_quality(gen, n)` generates n class-balanced samples (class i mod 10, seed i + seed_offset),
extracts the toy classifier's 256-d penultimate features, and compares their statistics with those of
REFERENCE_SAMPLES real ToyShapes images (data-set seed REFERENCE_SEED, never used in training) of the
ToyShapes version the model was trained on (its record's data_version). The reference statistics are cached
on disk, keyed by the classifier's weights and the version.

`argen bench toy` (run()) prints the quality-vs-speed table: for each acceleration and a few settings,
toy FID, class-consistency, wall-clock ratio and FLOPs ratio against its baseline, in one run with the
same seeds, and last the baseline on other seeds (the seed noise of those changes). `argen bench toy
model=... sweep=...` compares sampling options of one toy model instead. With `state=DIR` either keeps
its running scores in DIR after every batch and, run again after a stop, goes on from them (MAR's rows at
10,000 samples take longer than one sitting on a 2-core CPU; the scores are small enough to copy or commit
between machines).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from accel.api import ArgenError
from accel.checkpoints import CACHE_DIR, load_strict, read_checkpoint
from accel.toy import data_version
from pipeline.metrics import FeatureStats, fid_from_stats

REFERENCE_SEED = 2
REFERENCE_SAMPLES = 10_000
_classifier: dict[str, Any] = {}


def toy_classifier() -> tuple[torch.nn.Module, str]:
    """The committed toy classifier and the sha256 of its weights."""
    if "net" not in _classifier:
        from accel.toy import bundled_weights
        from accel.toy.classifier import ToyClassifier

        path = bundled_weights("toy_classifier")
        if path is None:
            raise FileNotFoundError("accel/toy/weights/toy_classifier.safetensors is missing; run "
                                    "`argen train-toy classifier`")
        net = ToyClassifier()
        load_strict(net, read_checkpoint(path), f"toy classifier {path}")
        _classifier["net"] = net.eval()
        _classifier["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return _classifier["net"], _classifier["sha"]


@torch.no_grad()
def classifier_outputs(images_uint8: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, H, W, 3] -> (features float64 [N, 256], predicted class [N])."""
    net, _ = toy_classifier()
    feats, preds = [], []
    for i in range(0, len(images_uint8), batch):
        x = torch.from_numpy(images_uint8[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        f, logits = net.features_and_logits(x)
        feats.append(f.double().numpy())
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def reference_stats(version: str) -> FeatureStats:
    """Toy-classifier feature statistics of REFERENCE_SAMPLES real images of ToyShapes `version`."""
    from training.common import toy_images

    _, sha = toy_classifier()
    path = CACHE_DIR / "toy" / f"reference_stats_{sha}_{version}_seed{REFERENCE_SEED}_n{REFERENCE_SAMPLES}.npz"
    if path.exists():
        with np.load(path) as f:
            return FeatureStats(int(f["n"]), f["mean"], f["m2"])
    images, _ = toy_images(REFERENCE_SEED, REFERENCE_SAMPLES, version)
    stats = FeatureStats.from_features(classifier_outputs(images)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, n=stats.n, mean=stats.mean, m2=stats.m2)
    return stats


def toy_quality(gen: Any, n: int, batch_size: int = 100, seed_offset: int = 0) -> dict[str, Any]:
    """Generate n class-balanced samples with `gen` and score them (toy FID, class-consistency, speed)."""
    return toy_quality_interleaved([gen], n, batch_size, seed_offset)[0]


def toy_quality_interleaved(gens: list[Any], n: int, batch_size: int = 100,
                            seed_offset: int | list[int] = 0, state_dir: str | Path | None = None,
                            settings: list[Any] | None = None) -> list[dict[str, Any]]:
    """toy_quality for several generators on the same conditions and seeds, batch by batch in turn, so that
    load from other processes on the machine falls on every generator alike. A list of seed offsets gives
    each generator its own seeds (the same generator on other seeds measures the seed noise).

    Each batch is scored as soon as it is generated (its toy-classifier features merged into running
    statistics, its class hits counted), so no images are held and the scores do not depend on whether
    the run stopped in between.

    state_dir: after every batch, keep the running scores there (a few MB whatever n is: _ScoreState),
    and start from the batches they cover, so a run of hours that stops goes on where it stopped when run
    again, on this machine or, with the folder copied, another. `settings` (JSON-able, one per generator:
    their options) is recorded with n, the batch size, the seeds, the models and the classifier, and a
    state written for other ones is refused."""
    offsets = [seed_offset] * len(gens) if isinstance(seed_offset, int) else list(seed_offset)
    if len(offsets) != len(gens):
        raise ValueError(f"{len(offsets)} seed offsets for {len(gens)} generators; give one per generator")
    state = _ScoreState(state_dir, {
        "n": n, "batch_size": batch_size, "seed_offsets": offsets, "settings": settings,
        "generators": [[g.name, g.accel, weights_digest(g)] for g in gens], "classifier": toy_classifier()[1],
    }) if state_dir else None
    versions = [data_version(g.name) for g in gens]
    done, scores = state.load(versions) if state else (0, [_RunningScores(v) for v in versions])
    t0 = time.perf_counter()
    for start in range(done, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        for g, gen in enumerate(gens):
            labels = [i % gen.num_classes for i in idx]
            out = gen.generate(labels, seeds=[i + offsets[g] for i in idx])
            scores[g].add(out.images, labels, out.stats)
        if state:  # a long run: say how far it is
            state.save(idx[-1] + 1, scores)
            print(f"toy bench: {idx[-1] + 1} of {n} samples scored per row ({len(gens)} rows), "
                  f"{time.perf_counter() - t0:.0f} s in this sitting; state={state.dir}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    return [{**s.result(), "wall_seconds": wall} for s in scores]


class _RunningScores:
    """One generator's scores so far: toy-classifier feature statistics, class hits, and the sums of
    seconds, FLOPs and method counters (each counter weighted by its batch's size)."""

    def __init__(self, version: str, features: FeatureStats | None = None, hits: int = 0,
                 sums: dict[str, float] | None = None):
        self.version = version  # the ToyShapes version whose real images are the FID reference
        self.features, self.hits, self.sums = features, hits, dict(sums or {})

    def add(self, images: np.ndarray, labels: list[int], stats: dict[str, Any]) -> None:
        feats, preds = classifier_outputs(images)
        if self.features is None:
            self.features = FeatureStats.empty(feats.shape[1])
        self.features.update(feats)
        self.hits += int(np.sum(preds == np.asarray(labels)))
        self.sums["seconds"] = self.sums.get("seconds", 0.0) + float(stats["seconds"])  # the batch's time
        for k, v in stats.items():  # per-image figures (flops, counters), weighted by the batch's size
            if k not in ("seconds", "images") and (k == "flops" or not k.startswith("flops")) and \
                    isinstance(v, (int, float)) and not isinstance(v, bool):
                self.sums[k] = self.sums.get(k, 0.0) + float(v) * len(labels)

    def result(self) -> dict[str, Any]:
        n = self.features.n
        return {"fid": fid_from_stats(self.features, reference_stats(self.version)), "class_consistency": self.hits / n,
                "samples": n, "generate_seconds": self.sums["seconds"], "flops_per_image": self.sums["flops"] / n,
                **{k: v / n for k, v in self.sums.items() if k not in ("seconds", "flops")}}


def weights_digest(gen: Any) -> str:
    """sha256 (16 hex digits) of a generator's model, tokenizer and drafter-model weights: a state of batches
    made with other weights (a retrained toy model or drafter) is not taken for this run's."""
    h = hashlib.sha256()
    drafter = getattr(getattr(gen, "decoder", None), "drafter", None)  # speculative decoding's ModelDrafter
    for module in (gen.model, getattr(gen, "tokenizer", None), getattr(drafter, "model", None)):
        if module is not None:
            for key, tensor in module.state_dict().items():
                h.update(key.encode())
                h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _ScoreState:
    """The running scores of toy_quality_interleaved on disk: meta.json (what the run is) and scores.npz
    (how many samples per generator are scored, and per generator g its feature statistics n_g / mean_g /
    m2_g, class hits hits_g and summed counters sums_g as JSON), rewritten whole after every batch. Kept to
    statistics, not images, so that a 10,000-sample state of several rows stays a few MB and can be copied
    (or committed) to go on elsewhere."""

    def __init__(self, state_dir: str | Path, meta: dict[str, Any]):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = json.loads(json.dumps(meta))  # as it reads back (tuples -> lists, int keys -> str)
        path = self.dir / "meta.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != meta:
                changed = sorted(k for k in set(saved) | set(meta) if saved.get(k) != meta.get(k))
                raise ArgenError(f"state={self.dir} holds scores of another run ({', '.join(changed)} differ); "
                                 f"pass a new state folder, or delete this one to start over")
        else:
            path.write_text(json.dumps(meta, indent=1))
        self.path = self.dir / "scores.npz"

    def load(self, versions: list[str]) -> tuple[int, list[_RunningScores]]:
        """(samples already scored, the running scores of each generator; `versions`: their data versions)."""
        if not self.path.exists():
            return 0, [_RunningScores(v) for v in versions]
        with np.load(self.path) as f:
            return int(f["done"]), [
                _RunningScores(v, FeatureStats(int(f[f"n_{g}"]), f[f"mean_{g}"], f[f"m2_{g}"]), int(f[f"hits_{g}"]),
                               json.loads(str(f[f"sums_{g}"]))) for g, v in enumerate(versions)]

    def save(self, done: int, scores: list[_RunningScores]) -> None:
        arrays: dict[str, Any] = {"done": np.array(done)}
        for g, s in enumerate(scores):
            arrays.update({f"n_{g}": np.array(s.features.n), f"mean_{g}": s.features.mean, f"m2_{g}": s.features.m2,
                           f"hits_{g}": np.array(s.hits), f"sums_{g}": np.array(json.dumps(s.sums))})
        tmp = self.dir / ".scores.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(self.path)  # the scores file is there whole or not at all


# -- the quality-vs-speed table ------------------------------------------------------------------------

# FastVAR: the 256-px defaults, the same ratios with earlier cache scales (on var_toy the cache scale decides
# most of the FID cost: docs/BENCHMARKS.md), a more aggressive setting, and upstream's Infinity-style skip.
VAR_SETTINGS = [
    ("fastvar", "defaults (13: 50%, 16: 75%, cache 10)", {}),
    ("fastvar", "defaults, cache 8", {"prune_ratios": {13: 0.5, 16: 0.75}, "cache_scale": 8}),
    ("fastvar", "defaults, cache 6", {"prune_ratios": {13: 0.5, 16: 0.75}, "cache_scale": 6}),
    ("fastvar", "aggressive (10: 40%, 13: 60%, 16: 85%, cache 8)",
     {"prune_ratios": {10: 0.4, 13: 0.6, 16: 0.85}, "cache_scale": 8}),
    ("fastvar", "skip last 2 scales (upstream Infinity style)", {"prune_ratios": {}, "skip_last_scales": 2}),
]


def _row(family: str, method: str, setting: str, q: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {"family": family, "method": method, "setting": setting, "fid": q["fid"],
            "fid_change": q["fid"] / base["fid"] - 1, "class_consistency": q["class_consistency"],
            "wall_clock_ratio": base["generate_seconds"] / q["generate_seconds"],
            "flops_ratio": base["flops_per_image"] / q["flops_per_image"],
            **{k: v for k, v in q.items() if k not in ("fid", "class_consistency", "samples")}}


def warm_generators(model: str, settings: list[dict[str, Any]], device: str = "cpu") -> list[Any]:
    """One generator of `model` per set of options (an "accel" key picks the acceleration, default none),
    each called once so that first-call work (allocations, LANTERN's neighbour tables) is not timed."""
    from accel.api import load_generator

    gens = [load_generator(model, device=device, **{"accel": "none", **options}) for options in settings]
    for gen in gens:
        gen.generate([0], seeds=[0])
    return gens


# Seeds of the sweeps (so sampling defaults are not chosen on the table's or the guards' seeds), and seeds
# nothing else uses: the baseline on OTHER_SEEDS + i is the tables' seed-noise row.
SWEEP_SEEDS = 2_000_000
OTHER_SEEDS = 10_000_000
SEED_NOISE_SETTING = f"baseline on other seeds ({OTHER_SEEDS:,} + i): seed noise"


def option_sweep(model: str, settings: list[dict[str, Any]], n: int, batch_size: int = 50,
                 seed_offset: int = SWEEP_SEEDS, state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Toy quality and speed of `model` under each set of generator options, on the same samples and seeds
    (by default seeds that the table and the guards do not use): how toy sampling defaults and acceleration
    settings are chosen."""
    return toy_quality_interleaved(warm_generators(model, settings), n, batch_size, seed_offset, state_dir, settings)


def toy_quality_with_seed_noise(gens: list[Any], n: int, batch_size: int, state_dir: str | Path | None = None,
                                settings: list[Any] | None = None) -> list[dict[str, Any]]:
    """toy_quality_interleaved of `gens` on seeds i, then gens[0] (the baseline) again on OTHER_SEEDS + i: its
    FID change is what a change of seeds alone does to the FID, its wall-clock ratio the timing noise.
    state_dir, settings (one per generator): as toy_quality_interleaved."""
    return toy_quality_interleaved(gens + gens[:1], n, batch_size, [0] * len(gens) + [OTHER_SEEDS], state_dir,
                                   None if settings is None else settings + settings[:1])


def settings_rows(family: str, model: str, settings: list[tuple[str, str, dict[str, Any]]], n: int,
                  batch_size: int = 250, state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """`model` with accel=none (the baseline) and each (method, setting, options), measured on the same n
    samples and seeds (i), batch by batch in turn; last, the seed-noise row (toy_quality_with_seed_noise)."""
    options = [{}] + [{"accel": method, **opts} for method, _, opts in settings]
    base, *results, noise = toy_quality_with_seed_noise(warm_generators(model, options), n, batch_size, state_dir,
                                                        options)
    rows = [_row(family, "none", "baseline", base, base)]
    rows += [_row(family, method, setting, q, base) for (method, setting, _), q in zip(settings, results)]
    return rows + [_row(family, "none", SEED_NOISE_SETTING, noise, base)]


def var_rows(n: int, batch_size: int = 250, state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """var_toy: accel=none and the FastVAR settings."""
    return settings_rows("VAR", "var_toy", VAR_SETTINGS, n, batch_size, state_dir)


# LazyMAR: its defaults (upstream's schedule: 5 warm-up steps, refresh every 9, layer 3, slack 15, head refresh
# every 7 timesteps skipping blocks 1-4), the paper's two caches without the head cache, and the fastest setting
# measured within +5% FID on mar_toy (docs/BENCHMARKS.md). The head cache alone and a gentler schedule were
# measured at 1,000 samples and left out here: each costs mar_toy about an hour more at 10,000 samples.
MAR_SETTINGS = [
    ("lazymar", "defaults (token + condition + head cache)", {}),
    ("lazymar", "token + condition cache (paper)", {"head_cache": False}),
    ("lazymar", "fast (refresh every 16, head every 4)", {"refresh_interval": 16, "head_refresh_interval": 4}),
]


def mar_rows(n: int, batch_size: int = 250, state_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """mar_toy: accel=none and the LazyMAR settings."""
    return settings_rows("MAR", "mar_toy", MAR_SETTINGS, n, batch_size, state_dir)


FAMILY_ROWS = {"var": "jobs.benches.toy:var_rows", "llamagen": "jobs.benches.toy_llamagen:table_rows",
               "mar": "jobs.benches.toy:mar_rows"}
FAMILY_WEIGHTS = {"var": ("var_toy", "var_vqvae_toy"), "llamagen": ("llamagen_toy", "llamagen_toy_draft", "llamagen_vq_toy"),
                  "mar": ("mar_toy", "mar_kl_toy")}


def missing_weights(family: str) -> list[str]:
    """The toy weights a family's rows need that are not committed (not trained yet)."""
    from accel.toy import bundled_weights

    return [name for name in FAMILY_WEIGHTS[family] if bundled_weights(name) is None]


def _parse_sweep(text: str) -> list[dict[str, Any]]:
    """"temperature=0.8,cfg=3.0;temperature=0.9" -> [{"temperature": 0.8, "cfg": 3.0}, {"temperature": 0.9}];
    a JSON list of objects is taken as it is (for nested options: '[{}, {"accel": "fastvar", "prune_ratios":
    {"16": 0.5}, "cache_scale": 13}]')."""
    if text.lstrip().startswith("["):
        import json

        settings = json.loads(text)
        if not all(isinstance(o, dict) for o in settings):
            raise SystemExit(f"argen bench toy sweep={text!r}: expected a JSON list of objects")
        return settings
    settings = []
    for part in text.split(";"):
        options: dict[str, Any] = {}
        for item in filter(None, part.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise SystemExit(f"argen bench toy sweep={text!r}: {item!r} is not key=value; write settings as "
                                 f"'temperature=0.8,cfg=3.0;temperature=0.9,cfg=3.0' or a JSON list of objects")
            try:
                options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                options[key.strip()] = value.strip()
        settings.append(options)
    return settings


_NOT_COUNTERS = {"family", "method", "setting", "fid", "fid_change", "class_consistency", "wall_clock_ratio",
                 "flops_ratio", "generate_seconds", "wall_seconds", "flops_per_image"}


def _counters(result: dict[str, Any]) -> str:
    """A row's method counters (target forwards, accepted length, full steps, kept tokens, ...) as k=v."""
    return ", ".join(f"{k}={v:.3g}" for k, v in result.items() if k not in _NOT_COUNTERS and isinstance(v, float))


def run(overrides: dict[str, str]) -> None:
    import importlib

    if "sweep" in overrides:  # argen bench toy model=mar_toy sweep="temperature=0.8,cfg=3.0;..." samples=250
        model, settings = overrides.pop("model", "mar_toy"), _parse_sweep(overrides.pop("sweep"))
        n, batch = int(overrides.pop("samples", 250)), int(overrides.pop("batch", 50))
        seed_offset = int(overrides.pop("seed_offset", SWEEP_SEEDS))
        state = overrides.pop("state", None)
        print(f"toy option sweep of {model}: {n} samples per setting (class i mod 10, seed {seed_offset} + i), "
              f"toy FID vs {REFERENCE_SAMPLES} real ToyShapes; ratios against the first setting\n\n"
              f"| options | toy FID | FID change | class-consistency | s/img | wall-clock ratio | FLOPs ratio | extra |\n"
              f"|---|---|---|---|---|---|---|---|")
        results = option_sweep(model, settings, n, batch, seed_offset, state)
        for options, q in zip(settings, results):
            print(f"| {options} | {q['fid']:.2f} | {100 * (q['fid'] / results[0]['fid'] - 1):+.1f}% "
                  f"| {q['class_consistency']:.3f} | {q['generate_seconds'] / n:.3f} "
                  f"| {results[0]['generate_seconds'] / q['generate_seconds']:.2f}x "
                  f"| {results[0]['flops_per_image'] / q['flops_per_image']:.2f}x | {_counters(q)} |", flush=True)
        return
    n = int(overrides.pop("samples", REFERENCE_SAMPLES))
    families = overrides.pop("families", "var,llamagen,mar").split(",")
    state = overrides.pop("state", None)
    print(f"toy FID: {n} samples per row (class i mod 10, seed i) vs {REFERENCE_SAMPLES} real ToyShapes "
          f"(seed {REFERENCE_SEED}), toy-classifier features; ratios against each family's accel=none row, "
          f"same samples and seeds; CPU, torch threads {torch.get_num_threads()}\n")
    print("| family | method | setting | toy FID | FID change | class-consistency | wall-clock ratio "
          "| FLOPs ratio | extra |")
    print("|---|---|---|---|---|---|---|---|---|")
    unknown = [f for f in families if f not in FAMILY_ROWS]
    if unknown:
        raise SystemExit(f"argen bench toy: families={','.join(families)}: unknown {unknown}; known: {sorted(FAMILY_ROWS)}")
    for family in families:
        missing = missing_weights(family)
        if missing:
            print(f"| {family} | - | no rows: weights not trained yet ({', '.join(missing)}; `argen train-toy ...`) "
                  f"| | | | | | |", flush=True)
            continue
        module, _, fn = FAMILY_ROWS[family].partition(":")
        rows = getattr(importlib.import_module(module), fn)(n, state_dir=Path(state) / family if state else None)
        for r in rows:
            extra = _counters(r)
            print(f"| {r['family']} | {r['method']} | {r['setting']} | {r['fid']:.2f} | {100 * r['fid_change']:+.1f}% "
                  f"| {r['class_consistency']:.3f} | {r['wall_clock_ratio']:.2f}x | {r['flops_ratio']:.2f}x "
                  f"| {extra} |", flush=True)
