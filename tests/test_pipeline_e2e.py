"""End to end through `argen generate` with the real var_tiny on the shared Ray cluster.

Local folder (2 workers) + resume + a complete rerun; moto S3 over HTTP (2 workers); an actor
killed mid-shard (redone elsewhere, totals exact) and one killed with no retries left (no
partial shard visible; a rerun completes it).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import datetime
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from jobs.cli import main as argen
from pipeline.plan import sample_seed
from pipeline.stats import STATS_FIELDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLASSES = [3, 7, 11]
PER_CLASS = 2          # 6 images
SHARD = 2              # 3 shards
BASE = ["model=var_tiny", "device=cpu", f"data.classes=[{','.join(map(str, CLASSES))}]",
        f"data.per_class={PER_CLASS}", f"output.shard_size={SHARD}", "batch_size=2", "progress=false",
        "ray.num_workers=2", "ray.cpus_per_worker=1"]
NUM_IMAGES = len(CLASSES) * PER_CLASS
NUM_SHARDS = NUM_IMAGES // SHARD
EXPECTED = [c for _ in range(PER_CLASS) for c in CLASSES]  # interleaved, class-balanced


def generate(*overrides: str) -> dict:
    code = argen(["generate", *BASE, *overrides])
    assert code == 0
    return code


class Store:
    """Read a run's objects from a local folder or an S3 prefix (independently of pipeline.sinks)."""

    def __init__(self, root: Path | None = None, endpoint: str | None = None, bucket: str = "", prefix: str = ""):
        self.root, self.bucket, self.prefix = root, bucket, prefix
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1") if endpoint else None

    def read(self, key: str) -> bytes:
        if self.s3 is None:
            return (self.root / key).read_bytes()
        return self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def keys(self) -> list[str]:
        if self.s3 is None:
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file())
        r = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return sorted(o["Key"][len(self.prefix) + 1:] for o in r.get("Contents", []))

    def json(self, key: str) -> dict:
        return json.loads(self.read(key))


def check_run(store: Store, tmp_path: Path, features: bool = False) -> dict[int, dict]:
    """Everything a complete run's output must satisfy; returns the stats records by shard."""
    keys = store.keys()
    expected_keys = {"run.json", "manifest.parquet", "report.json", "report.html", "contact_sheet.png"}
    for s in range(NUM_SHARDS):
        expected_keys |= {f"shards/{s:06d}.tar", f"shards/{s:06d}.stats.json"}
        if features:  # the toy classifier has logits too
            expected_keys |= {f"shards/{s:06d}.features.npy", f"shards/{s:06d}.logits.npy"}
    assert set(keys) == expected_keys, keys  # no temp files, no probes, nothing else

    from PIL import Image

    with Image.open(io.BytesIO(store.read("contact_sheet.png"))) as sheet:  # one row per class of shard 0..
        assert sheet.size[0] > 64 and sheet.size[1] > 64
    assert b"contact_sheet.png" in store.read("report.html")

    run = store.json("run.json")
    seed = run["plan"]["settings"]["seed"]
    assert run["plan"]["num_shards"] == NUM_SHARDS and run["plan"]["num_samples"] == NUM_IMAGES

    stats = {}
    for s in range(NUM_SHARDS):
        tar = store.read(f"shards/{s:06d}.tar")
        st = store.json(f"shards/{s:06d}.stats.json")
        stats[s] = st
        missing = [f for f in STATS_FIELDS if f not in st]
        assert not missing, (s, missing)
        assert st["shard"] == s and st["count"] == SHARD
        assert st["sha256"] == hashlib.sha256(tar).hexdigest() and st["bytes"] == len(tar)
        assert st["model"] == "var_tiny" and st["accel"] == "none" and st["device"] == "cpu"
        assert st["worker"].startswith("w") and st["attempt"] >= 0
        assert 0 < st["generate_seconds"] <= st["seconds"] and st["encode_seconds"] > 0 and st["write_seconds"] >= 0
        assert st["images_per_second"] == pytest.approx(SHARD / st["seconds"])
        assert st["flops"] > 0 and st["flops_per_image"] * SHARD == pytest.approx(st["flops"])
        assert datetime.fromisoformat(st["started_at"]) <= datetime.fromisoformat(st["finished_at"])
        q = st["quality"]
        assert 0 < q["image_mean"] < 255 and q["image_std"] > 0
        if features:
            feats = np.load(io.BytesIO(store.read(f"shards/{s:06d}.features.npy")))
            assert feats.dtype == np.float32 and feats.shape[0] == SHARD == q["feature_count"]
            assert np.isfinite(feats).all()
        else:
            assert q["feature_count"] == 0

        # readable by webdataset: keys, counts, conditions and seeds exact
        path = tmp_path / f"read-{s}.tar"
        path.write_bytes(tar)
        samples = list(wds.WebDataset(str(path), shardshuffle=False).decode("rgb8"))
        assert [x["__key__"] for x in samples] == [f"{s:06d}_{j:06d}" for j in range(SHARD)]
        for j, x in enumerate(samples):
            i = s * SHARD + j
            assert x["cls"] == EXPECTED[i]
            assert x["json"]["condition"] == EXPECTED[i] and x["json"]["seed"] == sample_seed(seed, i)
            assert x["json"]["index"] == i and x["json"]["model"] == "var_tiny" and x["json"]["accel"] == "none"
            assert x["png"].shape == (256, 256, 3) and x["png"].dtype == np.uint8

    manifest = pq.read_table(io.BytesIO(store.read("manifest.parquet"))).to_pylist()
    assert [r["shard"] for r in manifest] == list(range(NUM_SHARDS))
    assert [r["sha256"] for r in manifest] == [stats[s]["sha256"] for s in range(NUM_SHARDS)]
    version = store.json("run.json")["argen"]  # every shard names the code version that wrote it
    assert version and {r["argen"] for r in manifest} == {version} == {stats[s]["argen"] for s in range(NUM_SHARDS)}

    report = store.json("report.json")
    assert report["images"] == NUM_IMAGES and report["shards"] == NUM_SHARDS and report["complete"] is True
    assert report["seconds"] > 0 and report["images_per_second"] >= 0
    assert set(report["per_shard"]["images_per_second"]) == {"min", "median", "mean", "max", "std"}
    return stats


def test_local_run_resume_and_rerun(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    generate(f"output.uri={out}")
    store = Store(root=out)
    first = check_run(store, tmp_path)
    report = store.json("report.json")
    assert report["generated_images"] == NUM_IMAGES and report["generated_shards"] == NUM_SHARDS
    assert {w["worker"].split("@")[0] for w in report["workers"]} == {"w0", "w1"}

    # resume: a shard without its stats file does not exist, and is regenerated byte-identically;
    # a dead writer's temporary file is removed (check_run sees every file)
    (out / "shards/000001.stats.json").unlink()
    (out / "shards/.000001.tar.k3j4.tmp").write_bytes(b"half-written by a dead worker")
    generate(f"output.uri={out}")
    second = check_run(store, tmp_path)
    report = store.json("report.json")
    assert report["generated_shards"] == 1 and report["generated_images"] == SHARD
    assert second[1]["sha256"] == first[1]["sha256"]
    assert second[1]["started_at"] != first[1]["started_at"]  # it really was generated again
    for s in (0, 2):
        assert second[s] == first[s]  # committed shards untouched

    # a complete output: nothing to generate, no workers started, and the summary says so; report.json and
    # report.html still describe the run that generated the shards
    capsys.readouterr()
    page = (out / "report.html").read_bytes()
    generate(f"output.uri={out}")
    assert f"argen generate: nothing left to do: all {NUM_SHARDS} shards ({NUM_IMAGES} images) are committed" in \
        capsys.readouterr().out
    assert store.json("report.json") == report and (out / "report.html").read_bytes() == page
    assert check_run(store, tmp_path) == second


def test_s3_run_two_workers(ray_cluster, s3_bucket, aws_env, tmp_path):
    endpoint, bucket = s3_bucket
    generate(f"output.uri=s3://{bucket}/runs/a", "storage=s3_compatible", f"storage.endpoint_url={endpoint}",
             "storage.multipart_threshold_mb=5", "eval.features=toy")
    store = Store(endpoint=endpoint, bucket=bucket, prefix="runs/a")
    stats = check_run(store, tmp_path, features=True)
    assert len({st["worker"] for st in stats.values()}) == 2  # both actors did work
    uploads = store.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == []
    # no credentials anywhere in what the run wrote
    for key in store.keys():
        data = store.read(key)
        assert aws_env["AWS_SECRET_ACCESS_KEY"].encode() not in data, key
        assert aws_env["AWS_ACCESS_KEY_ID"].encode() not in data, key
    run = store.json("run.json")
    assert run["config"]["storage"]["endpoint_url"] == endpoint and run["output"] == f"s3://{bucket}/runs/a"


def test_worker_killed_mid_shard_is_redone_elsewhere(ray_cluster, tmp_path):
    out = tmp_path / "out"
    generate(f"output.uri={out}", "testing.kill_shard=1", "testing.kill_point=write")
    store = Store(root=out)
    stats = check_run(store, tmp_path)
    report = store.json("report.json")
    # shard 1 is redone; a shard that was in flight on the same actor is redone too
    assert stats[1]["attempt"] == 1 and all(st["attempt"] <= 1 for st in stats.values())
    assert report["replaced_workers"] == 1
    assert report["retried_shards"] == sum(st["attempt"] for st in stats.values()) >= 1
    assert any("shard 1 attempt 0" in r and "died" in r for r in report["retries"])
    assert report["images"] == NUM_IMAGES and report["generated_images"] == NUM_IMAGES  # totals exact


def test_worker_killed_without_retries_leaves_no_partial_shard(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        # the counts as quoted strings, as a command line may give them: they are checked, then used as ints
        argen(["generate", *BASE, f"output.uri={out}", "ray.num_workers='1.0'", "ray.max_attempts='1.0'",
               "testing.kill_shard=0", "testing.kill_point=write"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    # shard 0's worker died; any shard in flight on it died with it, and any of them may be named first
    assert re.search(r"shard \d+ failed 1 time\(s\) \(ray.max_attempts=1\); last error: the worker process died",
                     err) and "run the same command again" in err
    # the tar may be there, but without its stats file shard 0 does not exist
    assert not (out / "shards/000000.stats.json").exists()
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert 0 not in [r["shard"] for r in manifest]
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and report["shards"] == len(manifest)
    # resuming completes the run
    generate(f"output.uri={out}")
    check_run(Store(root=out), tmp_path)
