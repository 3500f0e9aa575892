"""Reading what `argen evaluate` compares: a run's committed shards and a reference.

- A run (local folder or s3:// through pipeline.sinks): only committed shards count (a shard is
  committed when `shards/NNNNNN.stats.json` exists); their `shards/NNNNNN.features.npy` (float32
  [count, D]) and, for the Inception Score, `shards/NNNNNN.logits.npy` are streamed shard by shard into
  merged float64 statistics (`read_run_features`). A features or logits file whose row count differs
  from its stats record's count is rejected by name.
- A reference (`load_reference`): an ADM-style .npz (mu/sigma; arr_0 images for precision/recall),
  another run, or a folder of images. Features computed from reference images are cached under
  accel.checkpoints.CACHE_DIR / "eval", keyed by the reference's content hash and the extractor's
  identity (name, weights hash, resize rule).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from accel.api import ArgenError
from pipeline import quality
from pipeline.metrics import FeatureStats, InceptionScoreAccumulator
from pipeline import layout
from pipeline.quality import decode_npy

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CACHE_VERSION = "argen-eval-ref-v1"


def cfg_get(cfg: Any, dotted: str, default: Any = None) -> Any:
    """cfg['a']['b'] for 'a.b' on DictConfig, dict or attribute objects; default where absent or None."""
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node[part] if part in node else None
        except TypeError:
            node = getattr(node, part, None)
    return default if node is None else node


# what `argen evaluate` merges into report.json: results of the samples committed when it ran
EVAL_REPORT_KEYS = ("fid", "inception_score", "inception_score_std", "precision", "recall", "class_consistency",
                    "extractor", "eval")


def listing(items: list[str], n: int = 20) -> str:
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


def scan_run(sink: Any, what: str = "output.uri") -> RunScan:
    keys = sink.list(layout.SHARDS)
    stats_ids = sorted(i for i in (layout.shard_of_key(k, layout.STATS_SUFFIX) for k in keys) if i is not None)
    feats = {i for i in (layout.shard_of_key(k, layout.FEATURES_SUFFIX) for k in keys) if i is not None}
    logits = {i for i in (layout.shard_of_key(k, layout.LOGITS_SUFFIX) for k in keys) if i is not None}
    if not stats_ids:
        hint = " (it has feature files but no committed shard yet)" if feats else ""
        raise ArgenError(f"{what}={sink.uri!r} has no committed shards (no shards/NNNNNN.stats.json){hint}; "
                         f"pass the output.uri of a run made by `argen generate`")
    records: dict[int, dict[str, Any]] = {}
    for i in stats_ids:
        key = layout.stats_key(i)
        try:
            rec = json.loads(sink.read(key))
            count = int(rec["count"])
        except (ValueError, KeyError, TypeError) as e:
            raise ArgenError(f"{what}: {key} is not a readable stats record ({type(e).__name__}: {e})") from None
        if count < 0:
            raise ArgenError(f"{what}: {key} has count={count}; expected a non-negative number of samples")
        records[i] = rec
    uncommitted = [layout.features_key(i) for i in sorted(feats - set(stats_ids))]
    uncommitted += [layout.logits_key(i) for i in sorted(logits - set(stats_ids))]
    run_json = None
    if sink.exists(layout.RUN_JSON):
        try:
            run_json = json.loads(sink.read(layout.RUN_JSON))
        except ValueError:
            run_json = None
    return RunScan(sink.uri, records, feats, logits, sorted(uncommitted), run_json)


def missing_features(scan: RunScan) -> list[int]:
    """Committed non-empty shards without a features file."""
    return [i for i in scan.nonempty() if i not in scan.features]


def check_features(scan: RunScan, what: str = "output.uri") -> None:
    missing = [layout.features_key(i) for i in missing_features(scan)]
    if missing:
        fix = ("pass eval.features=inception (with eval.inception_weights=...) or eval.features=toy, and argen "
               "evaluate computes them from the shards' images and stores them beside the shards"
               if what == "output.uri" else
               "run `argen evaluate output.uri=<that run> eval.features=...` once, which computes and stores them")
        raise ArgenError(f"{what}={scan.uri!r}: committed shards without features: {listing(missing)}; the run was "
                         f"generated without eval.features (or these files were deleted): {fix}")


def check_run(scan: RunScan, allow_partial: bool, what: str = "output.uri") -> None:
    """Feature files of uncommitted shards, or planned shards not committed, mean an unfinished run."""
    planned = ((scan.run_json or {}).get("plan") or {}).get("num_shards")
    not_done = [i for i in range(int(planned)) if i not in scan.stats] if isinstance(planned, int) else []
    if not_done and not allow_partial:
        raise ArgenError(f"{what}={scan.uri!r}: {len(not_done)} of its {planned} planned shards are not committed "
                         f"(shards {listing([layout.shard_name(i) for i in not_done])}), so its FID would be of "
                         f"{scan.total} samples, not the planned {scan.run_json['plan'].get('num_samples')}; finish "
                         f"the run (run the same generate command again) or pass eval.allow_partial=true to "
                         f"evaluate only the committed shards")
    if scan.uncommitted and not allow_partial:
        raise ArgenError(f"{what}={scan.uri!r}: feature files of uncommitted shards (no stats.json; still running "
                         f"or failed): {listing(scan.uncommitted)}; finish the run (run the same generate command "
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
        parts = [f"{name} (weights {w}) in shards {listing([layout.shard_name(s) for s in sorted(ids)], 5)}"
                 for (name, w), ids in seen.items()]
        raise ArgenError(f"{scan.uri!r} mixes features from different extractors: {'; '.join(parts)}; features "
                         f"of different extractors cannot be merged, regenerate the odd shards")
    sizes = recorded_feature_sizes(scan)
    if len(sizes) > 1:
        raise ArgenError(f"{scan.uri!r} mixes features computed at image sides {sorted(sizes)} (the stats records' "
                         f"feature_image_size); features of different sizes cannot be merged: delete the odd "
                         f"shards' features.npy and logits.npy and evaluate with eval.features set to recompute them")
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


def add_missing_features(sink: Any, scan: RunScan, extractor: quality.FeatureExtractor, eval_cfg: Any,
                         log: Callable[[str], None] = print) -> list[int]:
    """Features (and logits) of committed shards that lack them, computed from their tars' images as the
    workers would have (same extractor, same evaluation size), stored beside them for later evaluations.
    Writes the stats record's quality first and the features file last, so a stop in between leaves the
    shard without features, to be done again. Returns the shards done."""
    from pipeline.shards import decode_png, read_shard, sha256_hex
    from pipeline.stats import dumps_stats, utc_now

    todo = missing_features(scan)
    sizes = recorded_feature_sizes(scan)
    for n, i in enumerate(todo):
        rec = scan.stats[i]
        tar_key = layout.tar_key(i)
        damaged = (f"the shard is damaged: delete {layout.stats_key(i)} and run the same generate command "
                   f"to make it again (`argen verify` lists every such shard)")
        if not sink.exists(tar_key):
            raise ArgenError(f"{scan.uri}: shard {layout.shard_name(i)} is committed but {tar_key} is missing; {damaged}")
        data = sink.read(tar_key)
        if rec.get("sha256") and sha256_hex(data) != rec["sha256"]:
            raise ArgenError(f"{scan.uri}: {tar_key} does not match the sha256 in its stats record; {damaged}")
        samples = sorted(read_shard(data), key=lambda x: x["__key__"])
        if len(samples) != int(rec["count"]):
            raise ArgenError(f"{scan.uri}: {tar_key} holds {len(samples)} samples but its stats record says "
                             f"count={rec['count']}; {damaged}")
        del data
        conditions = [x["cls"] if "cls" in x else x.get("txt", "") for x in samples]

        def images_of(chunk: list[dict[str, Any]]) -> np.ndarray:
            try:
                return np.stack([decode_png(x["png"]) for x in chunk])
            except Exception as e:  # a PNG that does not decode, a sample without one
                raise ArgenError(f"{scan.uri}: {tar_key} has a sample whose image cannot be read ({type(e).__name__}: "
                                 f"{e}); {damaged}") from None

        generated = int(images_of(samples[:1]).shape[1])
        side = _eval_side(eval_cfg, rec.get("model"), generated, sizes)
        feats, logits = [], []
        for lo in range(0, len(samples), extractor.batch_size):
            images = images_of(samples[lo:lo + extractor.batch_size])
            if side is not None:
                images = quality.resize_for_eval(images, side)
            f, lg = extractor(images)
            feats.append(np.asarray(f, np.float32))
            if lg is not None:
                logits.append(np.asarray(lg))
        feats_all = np.concatenate(feats)
        logits_all = np.concatenate(logits) if logits else None
        q = {k: v for k, v in (rec.get("quality") or {}).items() if k != "class_consistency_absent"}
        q.update(feature_count=int(feats_all.shape[0]), extractor=extractor.name,
                 extractor_weights=extractor.weights, features_from="argen evaluate, from the tar",
                 features_at=utc_now(), feature_image_size=side or generated,
                 **quality.classifier_quality(logits_all, conditions, extractor.class_aligned))
        rec = {**rec, "quality": q}
        sink.write(layout.stats_key(i), dumps_stats(rec))
        if logits_all is not None:
            sink.write(layout.logits_key(i), quality.encode_npy(logits_all))
            scan.logits.add(i)
        sink.write(layout.features_key(i), quality.encode_npy(feats_all))
        scan.stats[i] = rec
        scan.features.add(i)
        log(f"features of shard {layout.shard_name(i)} computed from its images ({n + 1} of {len(todo)})")
    return todo


def recorded_feature_sizes(scan: RunScan) -> set[int]:
    """The image sides the run's existing features were computed at (stats records name them)."""
    return {int(q["feature_image_size"]) for q in ((r.get("quality") or {}) for r in scan.stats.values())
            if q.get("extractor") and q.get("feature_image_size")}


def _eval_side(eval_cfg: Any, model: str | None, generated: int, recorded: set[int]) -> int | None:
    """The side the workers would have given the extractor (None: as generated): the one the run's other
    features were computed at, else eval.image_size, else the model's evaluation size (LlamaGen 384 px: 256)."""
    if len(recorded) == 1:
        side = next(iter(recorded))
        asked = (eval_cfg or {}).get("image_size")
        if asked and int(asked) != side:
            raise ArgenError(f"eval.image_size={asked} but the run's other features were computed at {side} px; "
                             f"features of one run must share a size: leave eval.image_size unset")
        return None if side == generated else side
    from accel.api import eval_image_size_of

    try:
        model_side = eval_image_size_of(model) if isinstance(model, str) else None
    except ArgenError:  # a model this argen does not know: its generated size
        model_side = None
    return quality.eval_image_size(eval_cfg, model_side, generated)


def first_feature_dim(sink: Any, scan: RunScan) -> int:
    """The run's feature dimension, from its first committed shard's features."""
    key = layout.features_key(scan.nonempty()[0])
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


def subsample(n: int, cap: int | None, seed: int = 0) -> np.ndarray | None:
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
            lacking = [layout.logits_key(i) for i in shards if i not in scan.logits]
            raise ArgenError(f"{what}={scan.uri!r}: some committed shards have logits and these do not: "
                             f"{listing(lacking)}; the Inception Score needs every shard's logits; regenerate them")
        if total >= is_splits:
            isc = InceptionScoreAccumulator(total, is_splits)
        else:
            notes.append(f"no Inception Score: {total} samples are fewer than eval.is_splits={is_splits}")
    sel = subsample(total, prc_cap) if keep else None
    kept: np.ndarray | None = None
    stats: FeatureStats | None = None
    offset = 0
    cc_sum, cc_n = 0.0, 0
    for i in shards:
        count = int(scan.stats[i]["count"])
        key = layout.features_key(i)
        feats = decode_npy(sink.read(key), key)
        if feats.ndim != 2 or feats.shape[0] != count:
            rows = feats.shape[0] if feats.ndim else 0
            raise ArgenError(f"{what}: {key} holds {rows} rows (shape {tuple(feats.shape)}) but "
                             f"{layout.stats_key(i)} says count={count}; the file does not belong to this "
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
            lkey = layout.logits_key(i)
            logits = decode_npy(sink.read(lkey), lkey)
            if logits.ndim != 2 or logits.shape[0] != count:
                raise ArgenError(f"{what}: {lkey} has shape {tuple(logits.shape)} but {layout.stats_key(i)} "
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
    statistics: str = ""                 # where mu/sigma come from, said in the report and the printout


def _local_path(uri: str) -> Path:
    from accel.checkpoints import local_path

    return local_path(uri, "eval.reference")


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
        if (path / layout.SHARDS).is_dir() or (path / layout.RUN_JSON).is_file():
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
    from pipeline.sinks import S3Settings, make_s3_client

    return checkpoints.cached_s3_object(uri, "eval/downloads", make_s3_client(S3Settings.from_config(storage)))


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


def _check_arr0(uri: str, members: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple[int, ...]:
    shape, dtype = members["arr_0"]
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ArgenError(f"eval.reference={uri!r}: arr_0 has dtype {dtype} and shape {shape}; expected uint8 images "
                         f"[N, H, W, 3]")
    return shape


def check_reference(uri: str, cfg: Any, run_dim: int, run_extractor: str | None) -> str:
    """Cheap checks before the heavy work: the reference exists; an .npz has mu/sigma of the run's dimension."""
    kind = reference_kind(uri)
    if kind == "npz":
        members = npz_members(_npz_local(uri, cfg_get(cfg, "storage")))
        if "mu" not in members or "sigma" not in members:
            if "arr_0" in members:  # images only: statistics computed from them with the run's extractor
                _check_arr0(uri, members)
                return kind
            raise ArgenError(f"eval.reference={uri!r} has neither 'mu'/'sigma' nor 'arr_0' arrays (it holds: "
                             f"{', '.join(sorted(members)) or 'nothing'}); an ADM-style reference batch stores the "
                             f"FID statistics as mu [D] and sigma [D, D] and/or the images as arr_0 [N, H, W, 3] "
                             f"uint8 (e.g. VIRTUAL_imagenet256_labeled.npz); or pass a folder of images")
        mu_shape, sigma_shape = members["mu"][0], members["sigma"][0]
        if mu_shape != (run_dim,) or sigma_shape != (run_dim, run_dim):
            raise ArgenError(f"feature dimension mismatch: the run's features are {run_dim}-d "
                             f"({run_extractor or 'unknown extractor'}) but eval.reference={uri!r} has mu of shape "
                             f"{mu_shape} and sigma of shape {sigma_shape}; use a reference made with the same "
                             f"extractor (ADM .npz references are 2048-d Inception pool3: generate with "
                             f"eval.features=inception)")
    return kind


def load_reference(uri: str, cfg: Any, need_features: bool, get_extractor: Callable[[], quality.FeatureExtractor],
                   run_extractor: str | None, run_weights: str | None = None) -> Reference:
    kind = reference_kind(uri)
    batch = int(cfg_get(cfg, "eval.batch_size", 64))
    if kind == "run":
        from pipeline.sinks import open_sink

        sink = open_sink(uri, cfg_get(cfg, "storage"))
        scan = scan_run(sink, "eval.reference")
        check_run(scan, bool(cfg_get(cfg, "eval.allow_partial", False)), "eval.reference")
        check_features(scan, "eval.reference")
        ref_info = run_extractor_info(scan)
        ref_ex = ref_info["name"]
        if ref_ex and run_extractor and ref_ex != run_extractor:
            raise ArgenError(f"eval.reference={uri!r} has features from the {ref_ex!r} extractor but the run's come "
                             f"from {run_extractor!r}; compare runs made with the same eval.features")
        if ref_info["weights"] and run_weights and ref_info["weights"] != run_weights:
            raise ArgenError(f"eval.reference={uri!r} has {ref_ex} features made with weights {ref_info['weights']} "
                             f"but the run's were made with {run_weights}: two feature spaces, no FID between them; "
                             f"compare runs whose eval.features used the same weights")
        rf = read_run_features(sink, scan, need_features, None, None, "eval.reference")
        return Reference(kind, uri, rf.stats.mean, rf.stats.covariance(), rf.stats.n, rf.kept,
                         statistics=f"computed from the run's features ({rf.stats.n} samples)")
    if kind == "npz":
        path = _npz_local(uri, cfg_get(cfg, "storage"))
        members = npz_members(path)
        stored = "mu" in members and "sigma" in members
        if stored:
            with np.load(path, allow_pickle=False) as z:
                ref = Reference(kind, uri, np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64),
                                statistics="mu/sigma as stored in the .npz")
            ref.notes.append("FID uses the reference .npz's mu/sigma as stored (ADM's are from the TF Inception "
                             "graph; argen's features from torch-fidelity's port of it)")
        if not (need_features or not stored):
            return ref
        if "arr_0" not in members:
            ref.notes.append("the reference .npz has no arr_0 images: no precision/recall")
            return ref
        shape = _check_arr0(uri, members)
        extractor = get_extractor()
        stats, feats, cached = _cached_extraction(
            "npz-arr_0:" + _sha256_file(path).hexdigest(), extractor,
            lambda: _extract(iter_npz_rows(path, "arr_0", batch), shape[0], extractor))
        if not stored:  # as OpenAI's evaluator does with a batch of images only
            ref = Reference(kind, uri, stats.mean, stats.covariance(), statistics=(
                f"computed from its arr_0 ({stats.n} images) with the run's extractor {extractor.name}"))
        ref.cached, ref.n = cached, stats.n
        if need_features:
            ref.features = feats
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
                     cached=cached, statistics=f"computed from the folder's {stats.n} images")
