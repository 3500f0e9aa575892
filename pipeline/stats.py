"""Per-shard stats records (the shard's commit marker), the manifest and the run's totals.

A shard exists only when `shards/NNNNNN.stats.json` exists; it is written last, after the tar
and the features. The manifest is one row per committed shard; the report holds the totals.
"""
from __future__ import annotations

import io
import json
import math
import statistics
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np

from pipeline import layout

STATS_FIELDS = (
    "shard", "count", "attempt", "worker", "device", "model", "accel",
    "started_at", "finished_at", "seconds", "generate_seconds", "encode_seconds", "write_seconds",
    "images_per_second", "flops", "counters", "bytes", "sha256", "quality",
)
TIMING_KEYS = ("seconds", "images", "flops")  # generate() stats that are not method counters

MANIFEST_COLUMNS = ("shard", "count", "tar", "bytes", "sha256", "first_key", "last_key", "seconds",
                    "generate_seconds", "images_per_second", "flops", "worker", "attempt", "finished_at")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class CounterMerger:
    """Merges the method counters of a shard's generate() calls into the shard's `counters`.

    Counters describe one call (a rate, a mean length, steps per call, kept fraction per scale), so
    each numeric counter, or list of numbers (element-wise), is averaged over the calls, weighted by
    the number of images of each call. Other values are dropped.
    """

    def __init__(self) -> None:
        self.totals: dict[str, Any] = {}
        self.weights: dict[str, float] = {}

    @staticmethod
    def _number(v: Any) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))

    def add(self, stats: dict[str, Any]) -> None:
        images = float(stats.get("images", 1) or 1)
        for k, v in stats.items():
            if k in TIMING_KEYS:
                continue
            if self._number(v):
                value: Any = float(v) * images
                if k in self.totals and isinstance(self.totals[k], list):
                    continue  # a key that changed type between calls is not a counter
                self.totals[k] = self.totals.get(k, 0.0) + value
            elif isinstance(v, (list, tuple)) and v and all(self._number(x) for x in v):
                old = self.totals.get(k)
                if old is None:
                    self.totals[k] = [float(x) * images for x in v]
                elif isinstance(old, list) and len(old) == len(v):
                    self.totals[k] = [a + float(x) * images for a, x in zip(old, v)]
                else:
                    continue
            else:
                continue
            self.weights[k] = self.weights.get(k, 0.0) + images

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in sorted(self.totals):
            w, t = self.weights[k], self.totals[k]
            out[k] = [x / w for x in t] if isinstance(t, list) else t / w
        return out


def image_moments(images: np.ndarray) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of pixel values, for a streaming mean/std."""
    x = images.astype(np.float64, copy=False)
    return float(x.sum()), float(np.square(x).sum()), int(x.size)


def moments_to_mean_std(total: float, total_sq: float, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    mean = total / n
    return mean, math.sqrt(max(total_sq / n - mean * mean, 0.0))


def check_stats(record: dict[str, Any]) -> list[str]:
    """Problems with a stats record (empty list: it is complete)."""
    problems = [f"missing field {f!r}" for f in STATS_FIELDS if f not in record]
    if not problems:
        if not isinstance(record["count"], int) or record["count"] < 1:
            problems.append(f"count={record['count']!r}")
        if not isinstance(record["sha256"], str) or len(record["sha256"]) != 64:
            problems.append(f"sha256={record['sha256']!r}")
    return problems


def dumps_stats(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode("utf-8")


def manifest_row(record: dict[str, Any]) -> dict[str, Any]:
    shard, count = int(record["shard"]), int(record["count"])
    return {
        "shard": shard, "count": count, "tar": layout.tar_key(shard), "bytes": int(record["bytes"]),
        "sha256": record["sha256"], "first_key": layout.sample_key(shard, 0), "last_key": layout.sample_key(shard, count - 1),
        "seconds": float(record["seconds"]), "generate_seconds": float(record["generate_seconds"]),
        "images_per_second": float(record["images_per_second"]), "flops": float(record["flops"]),
        "worker": str(record["worker"]), "attempt": int(record["attempt"]), "finished_at": str(record["finished_at"]),
        "argen": str(record.get("argen") or ""),  # the code version that wrote the shard
    }


def manifest_parquet(records: Iterable[dict[str, Any]]) -> bytes:
    """manifest.parquet bytes: one row per committed shard, sorted by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted((manifest_row(r) for r in records), key=lambda r: r["shard"])
    schema = pa.schema([
        ("shard", pa.int64()), ("count", pa.int64()), ("tar", pa.string()), ("bytes", pa.int64()),
        ("sha256", pa.string()), ("first_key", pa.string()), ("last_key", pa.string()),
        ("seconds", pa.float64()), ("generate_seconds", pa.float64()), ("images_per_second", pa.float64()),
        ("flops", pa.float64()), ("worker", pa.string()), ("attempt", pa.int64()), ("finished_at", pa.string()),
        ("argen", pa.string()),
    ])
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": min(values), "median": statistics.median(values), "mean": statistics.fmean(values),
            "max": max(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarize(records: Sequence[dict[str, Any]], new_records: Sequence[dict[str, Any]], seconds: float,
              planned_shards: int, planned_images: int) -> dict[str, Any]:
    """report.json's totals.

    images / shards: what the output holds now. seconds: this run's wall time;
    images_per_second: images generated by this run / seconds. per_shard: spread over the shards
    generated by this run (all shards when this run generated none).
    """
    new_images = sum(int(r["count"]) for r in new_records)
    basis = new_records or records
    return {
        "images": sum(int(r["count"]) for r in records),
        "shards": len(records),
        "planned_images": planned_images,
        "planned_shards": planned_shards,
        "complete": len(records) == planned_shards,
        "generated_images": new_images,
        "generated_shards": len(new_records),
        "seconds": seconds,
        "images_per_second": new_images / seconds if seconds > 0 else 0.0,
        "generate_seconds": sum(float(r["generate_seconds"]) for r in new_records),
        "flops": sum(float(r["flops"]) for r in records),
        "bytes": sum(int(r["bytes"]) for r in records),
        "retried_shards": sum(1 for r in new_records if int(r["attempt"]) > 0),
        "per_shard": {
            "images_per_second": _spread([float(r["images_per_second"]) for r in basis]),
            "seconds": _spread([float(r["seconds"]) for r in basis]),
        },
    }
