"""`argen evaluate output.uri=... eval.reference=...`: FID, Inception Score, precision/recall of a run.

Reads only committed shards (a shard is committed when `shards/NNNNNN.stats.json` exists) and their
`shards/NNNNNN.features.npy` (+ `.logits.npy` for the Inception Score), from a local folder or S3,
shard by shard: float64 statistics are merged (Chan et al.), so memory stays at one d x d matrix plus,
for precision/recall, the float32 features themselves (50,000 x 2048 = 400 MB; eval.prc_max_samples
caps it).

eval.reference, one of
- an ADM-style .npz (local path, file:// or s3://): `mu`/`sigma` give the FID statistics as stored
  (ADM's come from the TF Inception graph; argen's samples from torch-fidelity's PyTorch port of it,
  which matches to ~1e-6 relative FID); `arr_0` (uint8 [N, H, W, 3]) is run through the extractor for
  precision/recall;
- another argen run (its output.uri: a folder with shards/ or run.json, or s3://...), whose features
  are used as they are;
- a folder of images (png, jpg, jpeg, webp, bmp; searched recursively, sorted by path);
- null: no FID or precision/recall, only the Inception Score and class-consistency.
Features computed from reference images are cached under accel.checkpoints.CACHE_DIR / "eval",
keyed by the reference's content hash and the extractor (name, weights hash, resize rule).

Results are merged into `report.json` at the run's root (keys fid, inception_score, precision, recall,
class_consistency, extractor, and `eval` with the details) and printed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

from accel.api import ArgenError
from pipeline import quality
from pipeline.metrics import FeatureStats, InceptionScoreAccumulator, frechet_distance, precision_recall
from pipeline.quality import FEATURES_SUFFIX, LOGITS_SUFFIX, decode_npy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = "argen-eval-ref-v1"
STATS_SUFFIX = ".stats.json"


def _get(cfg: Any, dotted: str, default: Any = None) -> Any:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part] if part in node else None
        except TypeError:
            node = getattr(node, part, None)
    return default if node is None else node


def _listing(items: list[str], n: int = 20) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# -- the run's shards ------------------------------------------------------------------------------

@dataclass
class RunScan:
    """What a run holds: committed shards (their stats records) and its feature/logit objects."""

    uri: str
    stats: dict[int, dict[str, Any]]
    features: set[int]
    logits: set[int]
    uncommitted: list[str]
    run_json: dict[str, Any] | None

    @property
    def total(self) -> int:
        return sum(int(r["count"]) for r in self.stats.values())

    def nonempty(self) -> list[int]:
        return sorted(i for i, r in self.stats.items() if int(r["count"]) > 0)


def _shard_id(key: str, suffix: str) -> int | None:
    if not (key.startswith("shards/") and key.endswith(suffix)):
        return None
    stem = key[len("shards/"):-len(suffix)]
    return int(stem) if len(stem) == 6 and stem.isdigit() else None


def scan_run(sink: Any, what: str = "output.uri") -> RunScan:
    keys = sink.list("shards/")
    stats_ids = sorted(i for i in (_shard_id(k, STATS_SUFFIX) for k in keys) if i is not None)
    feats = {i for i in (_shard_id(k, FEATURES_SUFFIX) for k in keys) if i is not None}
    logits = {i for i in (_shard_id(k, LOGITS_SUFFIX) for k in keys) if i is not None}
    if not stats_ids:
        hint = " (it has feature files but no committed shard yet)" if feats else ""
        raise ArgenError(f"{what}={sink.uri!r} has no committed shards (no shards/NNNNNN.stats.json){hint}; "
                         f"pass the output.uri of a run made by `argen generate`")
    records: dict[int, dict[str, Any]] = {}
    for i in stats_ids:
        key = f"shards/{i:06d}{STATS_SUFFIX}"
        try:
            rec = json.loads(sink.read(key))
            count = int(rec["count"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArgenError(f"{what}: {key} is not a readable stats record ({type(e).__name__}: {e})") from None
        if count < 0:
            raise ArgenError(f"{what}: {key} has count={count}; expected a non-negative number of samples")
        records[i] = rec
    uncommitted = [f"shards/{i:06d}{FEATURES_SUFFIX}" for i in sorted(feats - set(stats_ids))]
    uncommitted += [f"shards/{i:06d}{LOGITS_SUFFIX}" for i in sorted(logits - set(stats_ids))]
    run_json = None
    if sink.exists("run.json"):
        try:
            run_json = json.loads(sink.read("run.json"))
        except ValueError:
            run_json = None
    return RunScan(sink.uri, records, feats, logits, sorted(uncommitted), run_json)


def check_run(scan: RunScan, allow_partial: bool, what: str = "output.uri") -> None:
    """Committed shards must all have features; feature files of uncommitted shards mean an unfinished run."""
    missing = [f"shards/{i:06d}{FEATURES_SUFFIX}" for i in scan.nonempty() if i not in scan.features]
    if missing:
        raise ArgenError(f"{what}={scan.uri!r}: committed shards without features: {_listing(missing)}; the run was "
                         f"generated without eval.features (or these files were deleted). Generate with "
                         f"eval.features=inception (or toy) into a new output.uri, or delete these shards' "
                         f"stats.json files and run the same generate command with eval.features set")
    if scan.uncommitted and not allow_partial:
        raise ArgenError(f"{what}={scan.uri!r}: feature files of uncommitted shards (no stats.json; still running "
                         f"or failed): {_listing(scan.uncommitted)}; finish the run (run the same generate command "
                         f"again) or pass eval.allow_partial=true to evaluate only the committed shards")
    if scan.total < 2:
        raise ArgenError(f"{what}={scan.uri!r} has {scan.total} committed sample(s); FID needs at least 2 "
                         f"(normally 50,000)")


def run_extractor_info(scan: RunScan) -> dict[str, Any]:
    """Which extractor made the run's features: from its stats records (all must agree) or run.json."""
    seen: dict[tuple[Any, Any], list[int]] = {}
    for i, rec in scan.stats.items():
        q = rec.get("quality") or {}
        if q.get("extractor"):
            seen.setdefault((q.get("extractor"), q.get("extractor_weights")), []).append(i)
    if len(seen) > 1:
        parts = [f"{name} (weights {w}) in shards {_listing([f'{s:06d}' for s in sorted(ids)], 5)}"
                 for (name, w), ids in seen.items()]
        raise ArgenError(f"{scan.uri!r} mixes features from different extractors: {'; '.join(parts)}; features "
                         f"of different extractors cannot be merged, regenerate the odd shards")
    if seen:
        ((name, weights),) = seen
        return {"name": name, "weights": weights}
    rj = scan.run_json or {}
    for path in (("settings", "eval.features"), ("eval.features",), ("config", "eval", "features"),
                 ("eval", "features")):
        node: Any = rj
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, str) and node != "none":
            return {"name": node, "weights": None}
    return {"name": None, "weights": None}


def first_feature_dim(sink: Any, scan: RunScan) -> int:
    """The run's feature dimension, from its first committed shard's features."""
    key = f"shards/{scan.nonempty()[0]:06d}{FEATURES_SUFFIX}"
    feats = decode_npy(sink.read(key), key)
    if feats.ndim != 2:
        raise ArgenError(f"{key} has shape {tuple(feats.shape)}; expected [count, feature dim]")
    return int(feats.shape[1])


@dataclass
class RunFeatures:
    stats: FeatureStats
    kept: np.ndarray | None              # float32 [m, D] for precision/recall (all or a subsample)
    inception_score: tuple[float, float] | None
    class_consistency: float | None
    class_consistency_samples: int
    shards: int
    notes: list[str] = field(default_factory=list)


def _subsample(n: int, cap: int | None, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a deterministic subsample of size cap (None = keep all)."""
    if cap is None or cap >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=int(cap), replace=False))


def read_run_features(sink: Any, scan: RunScan, keep: bool, prc_cap: int | None, is_splits: int | None,
                      what: str = "output.uri") -> RunFeatures:
    """Stream the committed shards' features: merged float64 statistics, kept rows, IS and class-consistency."""
    shards = scan.nonempty()
    total = sum(int(scan.stats[i]["count"]) for i in shards)
    with_logits = [i for i in shards if i in scan.logits]
    notes: list[str] = []
    isc = None
    if with_logits and is_splits is not None:
        if len(with_logits) != len(shards):
            lacking = [f"shards/{i:06d}{LOGITS_SUFFIX}" for i in shards if i not in scan.logits]
            raise ArgenError(f"{what}={scan.uri!r}: some committed shards have logits and these do not: "
                             f"{_listing(lacking)}; the Inception Score needs every shard's logits; regenerate them")
        if total >= is_splits:
            isc = InceptionScoreAccumulator(total, is_splits)
        else:
            notes.append(f"no Inception Score: {total} samples are fewer than eval.is_splits={is_splits}")
    sel = _subsample(total, prc_cap) if keep else None
    kept: np.ndarray | None = None
    stats: FeatureStats | None = None
    offset = 0
    cc_sum, cc_n = 0.0, 0
    for i in shards:
        count = int(scan.stats[i]["count"])
        key = f"shards/{i:06d}{FEATURES_SUFFIX}"
        feats = decode_npy(sink.read(key), key)
        if feats.ndim != 2 or feats.shape[0] != count:
            rows = feats.shape[0] if feats.ndim else 0
            raise ArgenError(f"{what}: {key} holds {rows} rows (shape {tuple(feats.shape)}) but "
                             f"shards/{i:06d}{STATS_SUFFIX} says count={count}; the file does not belong to this "
                             f"shard. Delete both files and run the same generate command again")
        if stats is None:
            stats = FeatureStats.empty(feats.shape[1])
        elif feats.shape[1] != stats.dim:
            raise ArgenError(f"{what}: {key} has features of dimension {feats.shape[1]} but earlier shards have "
                             f"{stats.dim}; every shard must come from the same extractor")
        stats.update(feats)
        if keep:
            if kept is None:
                kept = np.empty((total if sel is None else len(sel), stats.dim), np.float32)
            if sel is None:
                kept[offset:offset + count] = feats
            else:
                lo, hi = np.searchsorted(sel, [offset, offset + count])
                kept[lo:hi] = feats[sel[lo:hi] - offset]
        del feats
        if isc is not None:
            lkey = f"shards/{i:06d}{LOGITS_SUFFIX}"
            logits = decode_npy(sink.read(lkey), lkey)
            if logits.ndim != 2 or logits.shape[0] != count:
                raise ArgenError(f"{what}: {lkey} has shape {tuple(logits.shape)} but shards/{i:06d}{STATS_SUFFIX} "
                                 f"says count={count}; the file does not belong to this shard. Delete both files "
                                 f"and run the same generate command again")
            isc.update(logits)
        cc = (scan.stats[i].get("quality") or {}).get("class_consistency")
        if cc is not None:
            cc_sum += float(cc) * count
            cc_n += count
        offset += count
    assert stats is not None  # check_run guarantees a non-empty shard
    return RunFeatures(stats=stats, kept=kept, inception_score=isc.result() if isc is not None else None,
                       class_consistency=cc_sum / cc_n if cc_n else None, class_consistency_samples=cc_n,
                       shards=len(shards), notes=notes)


# -- references ------------------------------------------------------------------------------------

@dataclass
class Reference:
    kind: str                            # "npz" | "run" | "images"
    uri: str
    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None
    features: np.ndarray | None = None   # float32 [m, D] for precision/recall
    notes: list[str] = field(default_factory=list)
    cached: bool = False


def _local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser()


def reference_kind(uri: str) -> str:
    if uri.startswith("s3://"):
        return "npz" if uri.lower().endswith(".npz") else "run"
    path = _local_path(uri)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise ArgenError(f"eval.reference={uri!r} is a {path.suffix or 'plain'} file; expected an ADM-style .npz "
                         f"(mu, sigma[, arr_0]), another run's output.uri, or a folder of images")
    if path.is_dir():
        if (path / "shards").is_dir() or (path / "run.json").is_file():
            return "run"
        return "images"
    raise ArgenError(f"eval.reference={uri!r} does not exist; pass an ADM-style .npz, another run's output.uri, "
                     f"or a folder of images")


def _sha256_file(path: Path, h: Any = None) -> Any:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h


def _npz_local(uri: str, storage: Any) -> Path:
    """A local path for an .npz reference; s3:// objects are downloaded once into the cache."""
    if not uri.startswith("s3://"):
        return _local_path(uri)
    from accel import checkpoints
    from pipeline.sinks import S3Settings, S3Sink

    parts = urlsplit(uri)
    dest = Path(checkpoints.CACHE_DIR) / "eval" / "downloads" / (hashlib.sha256(uri.encode()).hexdigest()[:32] + ".npz")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.stem + f".part{os.getpid()}")
        sink = S3Sink(f"s3://{parts.netloc}", S3Settings.from_config(storage))
        sink.client.download_file(parts.netloc, parts.path.lstrip("/"), str(tmp))
        tmp.replace(dest)
    return dest


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    return tuple(shape), bool(fortran), dtype


def npz_members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Array names -> (shape, dtype) of an .npz, from the headers only."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".npy"):
                    with z.open(name) as f:
                        shape, _, dtype = _read_npy_header(f)
                    out[name[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ArgenError(f"eval.reference={str(path)!r} is not a readable .npz ({type(e).__name__}: {e})") from None
    return out


def iter_npz_rows(path: Path, name: str, rows: int) -> Iterator[np.ndarray]:
    """Stream an array of an .npz along its first axis, `rows` at a time (never the whole array in memory)."""
    with zipfile.ZipFile(path) as z, z.open(name + ".npy") as f:
        shape, fortran, dtype = _read_npy_header(f)
        if fortran and len(shape) > 1:
            raise ArgenError(f"{path}: {name} is stored in Fortran order; save it C-ordered (np.savez)")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            buf = f.read(n * row_bytes)
            if len(buf) != n * row_bytes:
                raise ArgenError(f"{path}: {name} ends early (truncated file?)")
            yield np.frombuffer(buf, dtype=dtype).reshape((n,) + shape[1:])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _iter_folder_images(files: list[Path], rows: int) -> Iterator[np.ndarray]:
    """uint8 [n, H, W, 3] batches of consecutive images of the same size."""
    from PIL import Image

    batch: list[np.ndarray] = []
    for p in files:
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as e:
            raise ArgenError(f"eval.reference: cannot read image {str(p)!r} ({e}); remove or fix it") from None
        if batch and (arr.shape != batch[0].shape or len(batch) == rows):
            yield np.stack(batch)
            batch = []
        batch.append(arr)
    if batch:
        yield np.stack(batch)


def _extract(batches: Iterator[np.ndarray], total: int,
             extractor: quality.FeatureExtractor) -> tuple[FeatureStats, np.ndarray]:
    """Features of `total` images arriving in batches: statistics streamed, features in one float32 array."""
    stats = FeatureStats.empty(extractor.dim)
    feats = np.empty((total, extractor.dim), np.float32)
    done = 0
    for images in batches:
        f, _ = extractor(images)
        stats.update(f)
        feats[done:done + len(f)] = f
        done += len(f)
    if done != total:
        raise ArgenError(f"eval.reference: expected {total} images but read {done}")
    return stats, feats


def _cached_extraction(content_hash: str, extractor: quality.FeatureExtractor,
                       compute: Callable[[], tuple[FeatureStats, np.ndarray]]) -> tuple[FeatureStats, np.ndarray, bool]:
    """Reference statistics + features, cached by content hash and extractor identity."""
    from accel import checkpoints

    ident = json.dumps([CACHE_VERSION, content_hash, extractor.name, extractor.weights, extractor.resize])
    path = Path(checkpoints.CACHE_DIR) / "eval" / f"ref-{hashlib.sha256(ident.encode()).hexdigest()[:32]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["ident"]) == ident:
                    return FeatureStats(int(z["n"]), z["mean"], z["m2"]), z["features"], True
        except (ValueError, KeyError, OSError, zipfile.BadZipFile):
            pass  # a damaged cache entry is recomputed
    stats, feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".part{os.getpid()}.npz")
    np.savez(tmp, ident=np.array(ident), n=np.array(stats.n), mean=stats.mean, m2=stats.m2, features=feats)
    tmp.replace(path)
    return stats, feats, False


def check_reference(uri: str, cfg: Any, run_dim: int, run_extractor: str | None) -> str:
    """Cheap checks before the heavy work: the reference exists; an .npz has mu/sigma of the run's dimension."""
    kind = reference_kind(uri)
    if kind == "npz":
        members = npz_members(_npz_local(uri, _get(cfg, "storage")))
        if "mu" not in members or "sigma" not in members:
            raise ArgenError(f"eval.reference={uri!r} has no 'mu'/'sigma' arrays (it holds: "
                             f"{', '.join(sorted(members)) or 'nothing'}); an ADM-style reference batch stores the "
                             f"FID statistics as mu [D] and sigma [D, D] (e.g. VIRTUAL_imagenet256_labeled.npz); "
                             f"add them, or pass a folder of images as eval.reference")
        mu_shape, sigma_shape = members["mu"][0], members["sigma"][0]
        if mu_shape != (run_dim,) or sigma_shape != (run_dim, run_dim):
            raise ArgenError(f"feature dimension mismatch: the run's features are {run_dim}-d "
                             f"({run_extractor or 'unknown extractor'}) but eval.reference={uri!r} has mu of shape "
                             f"{mu_shape} and sigma of shape {sigma_shape}; use a reference made with the same "
                             f"extractor (ADM .npz references are 2048-d Inception pool3: generate with "
                             f"eval.features=inception)")
    return kind


def load_reference(uri: str, cfg: Any, need_features: bool, get_extractor: Callable[[], quality.FeatureExtractor],
                   run_extractor: str | None) -> Reference:
    kind = reference_kind(uri)
    batch = int(_get(cfg, "eval.batch_size", 64))
    if kind == "run":
        from pipeline.sinks import open_sink

        sink = open_sink(uri, _get(cfg, "storage"))
        scan = scan_run(sink, "eval.reference")
        check_run(scan, bool(_get(cfg, "eval.allow_partial", False)), "eval.reference")
        ref_ex = run_extractor_info(scan)["name"]
        if ref_ex and run_extractor and ref_ex != run_extractor:
            raise ArgenError(f"eval.reference={uri!r} has features from the {ref_ex!r} extractor but the run's come "
                             f"from {run_extractor!r}; compare runs made with the same eval.features")
        rf = read_run_features(sink, scan, need_features, None, None, "eval.reference")
        return Reference(kind, uri, rf.stats.mean, rf.stats.covariance(), rf.stats.n, rf.kept)
    if kind == "npz":
        path = _npz_local(uri, _get(cfg, "storage"))
        members = npz_members(path)
        with np.load(path, allow_pickle=False) as z:
            ref = Reference(kind, uri, np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64))
        ref.notes.append("FID uses the reference .npz's mu/sigma as stored (ADM's are from the TF Inception "
                         "graph; argen's features from torch-fidelity's port of it)")
        if need_features:
            if "arr_0" not in members:
                ref.notes.append("the reference .npz has no arr_0 images: no precision/recall")
                return ref
            shape, dtype = members["arr_0"]
            if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
                raise ArgenError(f"eval.reference={uri!r}: arr_0 has dtype {dtype} and shape {shape}; expected "
                                 f"uint8 images [N, H, W, 3]")
            extractor = get_extractor()
            stats, feats, ref.cached = _cached_extraction(
                "npz-arr_0:" + _sha256_file(path).hexdigest(), extractor,
                lambda: _extract(iter_npz_rows(path, "arr_0", batch), shape[0], extractor))
            ref.features, ref.n = feats, stats.n
        return ref
    folder = _local_path(uri)
    files = _image_files(folder)
    if len(files) < 2:
        raise ArgenError(f"eval.reference={uri!r} holds {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); a "
                         f"reference needs at least 2 (normally 10,000-50,000)")
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        _sha256_file(p, h)
        h.update(b"\0")
    extractor = get_extractor()
    stats, feats, cached = _cached_extraction("images:" + h.hexdigest(), extractor,
                                              lambda: _extract(_iter_folder_images(files, batch), len(files),
                                                               extractor))
    return Reference(kind, uri, stats.mean, stats.covariance(), stats.n, feats if need_features else None,
                     cached=cached)


# -- the job ---------------------------------------------------------------------------------------

def evaluate(cfg: Any) -> dict[str, Any]:
    """Evaluate the run at cfg.output.uri against cfg.eval.reference; merge the results into report.json."""
    from accel.api import resolve_device
    from pipeline.sinks import open_sink

    t0 = time.perf_counter()
    uri = str(_get(cfg, "output.uri", ""))
    reference = _get(cfg, "eval.reference")
    reference = str(reference) if reference not in (None, "", "none", "null") else None
    do_prc = bool(_get(cfg, "eval.precision_recall", True)) and reference is not None
    k = int(_get(cfg, "eval.prc_k", 3))
    cap = _get(cfg, "eval.prc_max_samples")
    cap = None if cap is None else int(cap)
    if cap is not None and cap <= k:
        raise ArgenError(f"eval.prc_max_samples={cap} must exceed eval.prc_k={k} (or be null for all samples)")
    splits = int(_get(cfg, "eval.is_splits", 10))
    if splits < 1:
        raise ArgenError(f"eval.is_splits={splits} must be at least 1 (the usual value is 10)")
    device = _get(cfg, "eval.device") or _get(cfg, "device")

    sink = open_sink(uri, _get(cfg, "storage"))
    scan = scan_run(sink)
    check_run(scan, bool(_get(cfg, "eval.allow_partial", False)))
    info = run_extractor_info(scan)
    asked = str(_get(cfg, "eval.features", "none"))
    if info["name"] and asked != "none" and asked != info["name"]:
        raise ArgenError(f"eval.features={asked!r} but the run's features were made by {info['name']!r}; leave "
                         f"eval.features unset (it is read from the run) or evaluate with the same extractor")
    name = info["name"] or (asked if asked != "none" else None)
    if reference is not None:
        check_reference(reference, cfg, first_feature_dim(sink, scan), name)

    rf = read_run_features(sink, scan, do_prc, cap, splits)
    holder: dict[str, quality.FeatureExtractor] = {}

    def get_extractor() -> quality.FeatureExtractor:
        if "x" not in holder:
            if name is None:
                raise ArgenError("cannot tell which extractor made the run's features (no 'extractor' in the shards' "
                                 "quality records nor eval.features in run.json); pass eval.features=inception|toy")
            ex = quality.make_extractor(name, _get(cfg, "eval"), device)
            if ex.dim != rf.stats.dim:
                raise ArgenError(f"the {name} extractor gives {ex.dim}-d features but the run's are {rf.stats.dim}-d; "
                                 f"pass the eval.features the run was generated with")
            if info["weights"] and ex.weights != info["weights"]:
                which = "eval.inception_weights" if name == "inception" else "eval.toy_checkpoint"
                raise ArgenError(f"the run's features come from {name} weights {info['weights']} but {which} gives "
                                 f"{ex.weights}; reference features must be made with the same weights")
            holder["x"] = ex
        return holder["x"]

    fid = precision = recall = None
    ref: Reference | None = None
    notes: list[str] = list(rf.notes)
    if reference is not None:
        ref = load_reference(reference, cfg, do_prc, get_extractor, name)
        notes += ref.notes
        fid = frechet_distance(rf.stats.mean, rf.stats.covariance(), ref.mu, ref.sigma,
                               names=("the run's features", f"eval.reference={reference!r}"),
                               device=resolve_device(device))
        if do_prc and ref.features is not None:
            rfeat = ref.features
            sel = _subsample(rfeat.shape[0], cap, seed=1)
            if sel is not None:
                rfeat = rfeat[sel]
            precision, recall = precision_recall(rf.kept, rfeat, k=k, device=resolve_device(device))
    else:
        notes.append("no eval.reference: FID and precision/recall need one")
    if rf.inception_score is None and not rf.notes:
        notes.append("no logits files: no Inception Score (the extractor has no classifier)")

    resize = {"inception": quality.INCEPTION_RESIZE, "toy": quality.ToyExtractor.resize}.get(name or "")
    weights = info["weights"] or (holder["x"].weights if "x" in holder else None)
    details = {
        "extractor": name, "resize": resize, "weights": weights, "feature_dim": rf.stats.dim,
        "samples": rf.stats.n, "shards": rf.shards,
        "reference": None if ref is None else {
            "uri": ref.uri, "kind": ref.kind, "samples": ref.n, "cached": ref.cached,
            "prc_samples": None if ref.features is None else min(int(ref.features.shape[0]), cap or 1 << 62)},
        "prc_k": k, "prc_samples": None if rf.kept is None else int(rf.kept.shape[0]),
        "is_splits": splits, "class_consistency_samples": rf.class_consistency_samples,
        "uncommitted_skipped": scan.uncommitted, "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    results = {
        "fid": fid,
        "inception_score": None if rf.inception_score is None else rf.inception_score[0],
        "inception_score_std": None if rf.inception_score is None else rf.inception_score[1],
        "precision": precision, "recall": recall,
        "class_consistency": rf.class_consistency,
        "extractor": name,
        "eval": details,
    }
    report: dict[str, Any] = {}
    if sink.exists("report.json"):
        try:
            report = json.loads(sink.read("report.json"))
        except ValueError:
            raise ArgenError(f"{uri}/report.json is not valid JSON; fix or delete it, then evaluate again") from None
        if not isinstance(report, dict):
            raise ArgenError(f"{uri}/report.json holds a {type(report).__name__}, expected a JSON object")
    report.update(results)
    sink.write("report.json", json.dumps(report, indent=1, sort_keys=True).encode("utf-8"))
    print_results(results, uri)
    return results


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_results(r: dict[str, Any], uri: str) -> None:
    d = r["eval"]
    ref = d["reference"]
    print(f"argen evaluate {uri}: {d['samples']} samples in {d['shards']} shards, extractor {r['extractor']} "
          f"({d['feature_dim']}-d; resize: {d['resize']}; weights: {d['weights']})")
    if ref:
        print(f"  reference: {ref['uri']} ({ref['kind']}, "
              f"{'mu/sigma only' if ref['samples'] is None else str(ref['samples']) + ' samples'}"
              f"{', cached features' if ref['cached'] else ''})")
    print(f"  FID {_fmt(r['fid'])}  IS {_fmt(r['inception_score'], 3)} +- {_fmt(r['inception_score_std'], 3)}  "
          f"precision {_fmt(r['precision'])}  recall {_fmt(r['recall'])} (k={d['prc_k']})  "
          f"class-consistency {_fmt(r['class_consistency'])}")
    for n in d["notes"]:
        print(f"  note: {n}")
    print(json.dumps({k: v for k, v in r.items() if k != "eval"}, sort_keys=True))


def main() -> int:
    import hydra

    failed: list[ArgenError] = []

    @hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"), config_name="config")
    def _app(cfg: Any) -> None:
        try:
            evaluate(cfg)
        except ArgenError as e:
            failed.append(e)

    _app()
    if failed:
        print(f"argen evaluate: error: {failed[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
