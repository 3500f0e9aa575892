"""`argen evaluate output.uri=... eval.reference=...`: FID, Inception Score, precision/recall of a run.

Reads only committed shards (a shard is committed when `shards/NNNNNN.stats.json` exists) and their
`shards/NNNNNN.features.npy` (+ `.logits.npy` for the Inception Score), from a local folder or S3,
shard by shard (a run generated without eval.features gets them computed from its PNGs first, with
eval.features=inception|toy, and stored beside the shards): float64 statistics are merged (Chan et al.), so memory stays at one d x d matrix plus,
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

Reading runs and references lives in pipeline/evaluation.py; the metrics in pipeline/metrics.py.
Results are merged into `report.json` at the run's root (keys fid, inception_score, precision, recall,
class_consistency, extractor, and `eval` with the details) and printed.
"""
from __future__ import annotations

import json
import time
from typing import Any

from accel.api import ArgenError
from pipeline import layout, quality
from pipeline.evaluation import (Reference, add_missing_features, cfg_get, check_features, check_reference, check_run,
                                 first_feature_dim, load_reference, missing_features, read_run_features,
                                 reference_kind, run_extractor_info, scan_run, subsample)
from pipeline.metrics import frechet_distance, precision_recall
from pipeline.report import write_report_html


# -- the job ---------------------------------------------------------------------------------------

def evaluate(cfg: Any) -> dict[str, Any]:
    """Evaluate the run at cfg.output.uri against cfg.eval.reference; merge the results into report.json."""
    from accel.api import resolve_device
    from pipeline.sinks import open_sink

    t0 = time.perf_counter()
    uri = str(cfg_get(cfg, "output.uri", ""))
    reference = cfg_get(cfg, "eval.reference")
    reference = str(reference) if reference not in (None, "", "none", "null") else None
    do_prc = bool(cfg_get(cfg, "eval.precision_recall", True)) and reference is not None
    k = int(cfg_get(cfg, "eval.prc_k", 3))
    cap = cfg_get(cfg, "eval.prc_max_samples")
    cap = None if cap is None else int(cap)
    if cap is not None and cap <= k:
        raise ArgenError(f"eval.prc_max_samples={cap} must exceed eval.prc_k={k} (or be null for all samples)")
    splits = int(cfg_get(cfg, "eval.is_splits", 10))
    if splits < 1:
        raise ArgenError(f"eval.is_splits={splits} must be at least 1 (the usual value is 10)")
    device = cfg_get(cfg, "eval.device") or cfg_get(cfg, "device")

    sink = open_sink(uri, cfg_get(cfg, "storage"))
    scan = scan_run(sink)
    check_run(scan, bool(cfg_get(cfg, "eval.allow_partial", False)))
    info = run_extractor_info(scan)
    asked = str(cfg_get(cfg, "eval.features", "none"))
    if info["name"] and asked != "none" and asked != info["name"]:
        raise ArgenError(f"eval.features={asked!r} but the run's features were made by {info['name']!r}; leave "
                         f"eval.features unset (it is read from the run) or evaluate with the same extractor")
    name = info["name"] or (asked if asked != "none" else None)
    holder: dict[str, quality.FeatureExtractor] = {}
    run_dim: list[int] = []  # known once the run's features are read

    def check_dim() -> None:
        if "x" in holder and run_dim and holder["x"].dim != run_dim[0]:
            raise ArgenError(f"the {name} extractor gives {holder['x'].dim}-d features but the run's are "
                             f"{run_dim[0]}-d; pass the eval.features the run was generated with")

    def get_extractor() -> quality.FeatureExtractor:
        if "x" not in holder:
            if name is None:
                raise ArgenError("cannot tell which extractor made the run's features (no 'extractor' in the shards' "
                                 "quality records nor eval.features in run.json); pass eval.features=inception|toy")
            ex = quality.make_extractor(name, cfg_get(cfg, "eval"), device)
            if info["weights"] and ex.weights != info["weights"]:
                which = "eval.inception_weights" if name == "inception" else "eval.toy_checkpoint"
                raise ArgenError(f"the run's features come from {name} weights {info['weights']} but {which} gives "
                                 f"{ex.weights}; features merged or compared with them must come from the same "
                                 f"weights: pass the {which} the run was generated with")
            holder["x"] = ex
            check_dim()
        return holder["x"]

    if reference is not None and not reference.startswith("s3://"):
        reference_kind(reference)  # a mistyped local reference fails now, not after computing features
    if missing_features(scan) and name is not None:  # generated without eval.features: from the images
        added = add_missing_features(sink, scan, get_extractor(), cfg_get(cfg, "eval"))
        info = run_extractor_info(scan)  # every shard now names its extractor; mixtures are refused here
    else:
        added = []
    check_features(scan)
    if reference is not None:
        check_reference(reference, cfg, first_feature_dim(sink, scan), name)

    rf = read_run_features(sink, scan, do_prc, cap, splits)
    run_dim.append(rf.stats.dim)
    check_dim()

    fid = precision = recall = None
    ref: Reference | None = None
    notes: list[str] = list(rf.notes)
    if reference is not None:
        ref = load_reference(reference, cfg, do_prc, get_extractor, name, info["weights"])
        notes += ref.notes
        fid = frechet_distance(rf.stats.mean, rf.stats.covariance(), ref.mu, ref.sigma,
                               names=("the run's features", f"eval.reference={reference!r}"),
                               device=resolve_device(device))
        if do_prc and ref.features is not None:
            rfeat = ref.features
            sel = subsample(rfeat.shape[0], cap, seed=1)
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
        "samples": rf.stats.n, "shards": rf.shards, "features_computed_here": len(added),
        "reference": None if ref is None else {
            "uri": ref.uri, "kind": ref.kind, "samples": ref.n, "cached": ref.cached, "statistics": ref.statistics,
            "prc_samples": None if ref.features is None else min(int(ref.features.shape[0]), cap or 1 << 62)},
        "prc_k": k, "prc_samples": None if rf.kept is None else int(rf.kept.shape[0]),
        "is_splits": splits, "class_consistency_samples": rf.class_consistency_samples,
        "uncommitted_skipped": scan.uncommitted, "notes": notes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    results = {  # the keys of EVAL_REPORT_KEYS
        "fid": fid,
        "inception_score": None if rf.inception_score is None else rf.inception_score[0],
        "inception_score_std": None if rf.inception_score is None else rf.inception_score[1],
        "precision": precision, "recall": recall,
        "class_consistency": rf.class_consistency,
        "extractor": name,
        "eval": details,
    }
    report: dict[str, Any] = {}
    if sink.exists(layout.REPORT_JSON):
        try:
            report = json.loads(sink.read(layout.REPORT_JSON))
        except ValueError:
            raise ArgenError(f"{uri}/report.json is not valid JSON; fix or delete it, then evaluate again") from None
        if not isinstance(report, dict):
            raise ArgenError(f"{uri}/report.json holds a {type(report).__name__}, expected a JSON object")
    report.update(results)
    sink.write(layout.REPORT_JSON, json.dumps(report, indent=1, sort_keys=True).encode("utf-8"))
    write_report_html(sink, report)
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
        print(f"  reference: {ref['uri']} ({ref['kind']}; FID statistics: {ref['statistics']}"
              f"{'' if ref['samples'] is None else '; ' + str(ref['samples']) + ' images for precision/recall'}"
              f"{', cached features' if ref['cached'] else ''})")
    print(f"  FID {_fmt(r['fid'])}  IS {_fmt(r['inception_score'], 3)} +- {_fmt(r['inception_score_std'], 3)}  "
          f"precision {_fmt(r['precision'])}  recall {_fmt(r['recall'])} (k={d['prc_k']})  "
          f"class-consistency {_fmt(r['class_consistency'])}")
    for n in d["notes"]:
        print(f"  note: {n}")
    print(json.dumps({k: v for k, v in r.items() if k != "eval"}, sort_keys=True))


def main() -> int:
    from jobs.common import run_job

    def task(cfg: Any) -> int:
        evaluate(cfg)
        return 0

    return run_job("evaluate", task)


if __name__ == "__main__":
    from jobs.cli import entry

    entry(main)
