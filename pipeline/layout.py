"""Every key of a run's output under output.uri, in one place (ARCHITECTURE's output layout).

    run.json                      written first: the resolved config, plan hash, code version
    lease.json                    while a run writes: its owner and heartbeat (one writer per output)
    shards/NNNNNN.tar             WebDataset members NNNNNN_iiiiii.{png,json,cls|txt}
    shards/NNNNNN.features.npy    optional quality features (+ .logits.npy where the extractor classifies)
    shards/NNNNNN.stats.json      written last: the shard's commit marker
    manifest.parquet, report.json, report.html, contact_sheet.png
    submits/<submission id>.json  one record per `argen submit`

Shard ids and in-shard indices are written with 6 digits; no user text ever reaches a key.
"""
from __future__ import annotations

RUN_JSON = "run.json"
LEASE = "lease.json"
MANIFEST = "manifest.parquet"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
CONTACT_SHEET = "contact_sheet.png"
SHARDS = "shards/"
SUBMITS = "submits/"
RUN_FILES = (RUN_JSON, LEASE, MANIFEST, REPORT_JSON, REPORT_HTML, CONTACT_SHEET)
RUN_FOLDERS = (SHARDS, SUBMITS)

TAR_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"
FEATURES_SUFFIX = ".features.npy"
LOGITS_SUFFIX = ".logits.npy"


def shard_name(shard: int) -> str:
    """12 -> "000012", the shard's name in keys and messages."""
    return f"{int(shard):06d}"


def sample_key(shard: int, index: int) -> str:
    """The WebDataset key of sample `index` of a shard: "000012_000003"."""
    return f"{int(shard):06d}_{int(index):06d}"


def _shard_object(shard: int, suffix: str) -> str:
    return f"{SHARDS}{shard_name(shard)}{suffix}"


def tar_key(shard: int) -> str:
    return _shard_object(shard, TAR_SUFFIX)


def stats_key(shard: int) -> str:
    return _shard_object(shard, STATS_SUFFIX)


def features_key(shard: int) -> str:
    return _shard_object(shard, FEATURES_SUFFIX)


def logits_key(shard: int) -> str:
    return _shard_object(shard, LOGITS_SUFFIX)


def submit_key(submission_id: str) -> str:
    return f"{SUBMITS}{submission_id}.json"


def shard_of_key(key: str, suffix: str) -> int | None:
    """shards/000012<suffix> -> 12; any other key -> None."""
    if not (key.startswith(SHARDS) and key.endswith(suffix)):
        return None
    stem = key[len(SHARDS):-len(suffix)]
    return int(stem) if len(stem) == 6 and stem.isdigit() else None


def shard_of_stats_key(key: str) -> int | None:
    """shards/000012.stats.json -> 12; anything else -> None."""
    return shard_of_key(key, STATS_SUFFIX)
