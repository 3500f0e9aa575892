"""Shard tars: WebDataset-readable, plain-tar readable, byte-reproducible; stats and manifest."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.layout import shard_of_stats_key, stats_key
from pipeline.shards import ShardTarWriter, decode_png, read_shard, sample_metadata, sha256_hex
from pipeline.stats import (CounterMerger, STATS_FIELDS, check_stats, manifest_parquet, moments_to_mean_std,
                            image_moments, summarize)


def make_tar(images, conditions, shard=3):
    w = ShardTarWriter(png_compress_level=1)
    for j, (img, c) in enumerate(zip(images, conditions)):
        key = f"{shard:06d}_{j:06d}"
        w.add(key, img, sample_metadata(key, j, c, 100 + j, "var_tiny", "none", {"cfg": 1.5}, img.shape[0]))
    return w.finish()


def test_tar_roundtrip_and_reproducible(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    data = make_tar(images, [5, 9, 5])
    assert data == make_tar(images, [5, 9, 5])  # byte-identical: fixed mtime/owner, deterministic PNG
    changed = images.copy()
    changed[1, 0, 0, 0] ^= 1
    assert sha256_hex(make_tar(changed, [5, 9, 5])) != sha256_hex(data)

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert names == [f"000003_00000{j}.{e}" for j in range(3) for e in ("cls", "json", "png")]

    samples = read_shard(data)
    assert [s["cls"] for s in samples] == [5, 9, 5]
    for j, s in enumerate(samples):
        assert np.array_equal(decode_png(s["png"]), images[j])
        assert s["json"]["seed"] == 100 + j and s["json"]["model"] == "var_tiny"
        assert s["json"]["options"] == {"cfg": 1.5}

    path = tmp_path / "000003.tar"
    path.write_bytes(data)
    got = list(wds.WebDataset(str(path), shardshuffle=False).decode("rgb8"))
    assert [g["__key__"] for g in got] == ["000003_000000", "000003_000001", "000003_000002"]
    assert np.array_equal(got[2]["png"], images[2])
    assert got[1]["cls"] == 9 and got[1]["json"]["condition"] == 9


def test_prompts_go_to_txt():
    img = np.zeros((8, 8, 3), np.uint8)
    samples = read_shard(make_tar([img], ["a red bird"]))
    assert samples[0]["txt"] == "a red bird" and "cls" not in samples[0]


def test_counter_merger():
    m = CounterMerger()
    m.add({"seconds": 1.0, "images": 2, "flops": 5.0, "steps": 10, "hit_rate": 0.5, "name": "x",
           "kept": [1.0, 0.5], "flag": True})
    m.add({"seconds": 1.0, "images": 6, "flops": 5.0, "steps": 4, "hit_rate": 0.9, "kept": [1.0, 0.25]})
    r = m.result()
    assert sorted(r) == ["hit_rate", "kept", "steps"]
    assert r["hit_rate"] == pytest.approx((0.5 * 2 + 0.9 * 6) / 8) and r["steps"] == pytest.approx((10 * 2 + 4 * 6) / 8)
    assert r["kept"] == pytest.approx([1.0, (0.5 * 2 + 0.25 * 6) / 8])


def test_moments():
    x = np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3)
    mean, std = moments_to_mean_std(*image_moments(x))
    assert abs(mean - x.mean()) < 1e-9 and abs(std - x.std()) < 1e-9


def record(shard, count=4, attempt=0, ips=2.0):
    r = {f: None for f in STATS_FIELDS}
    r.update(shard=shard, count=count, attempt=attempt, worker="w0", device="cpu", model="m", accel="none",
             started_at="t0", finished_at="t1", seconds=count / ips, generate_seconds=1.0, encode_seconds=0.1,
             write_seconds=0.1, images_per_second=ips, flops=10.0, counters={}, bytes=1000, sha256="a" * 64,
             quality={})
    return r


def test_check_stats_and_keys():
    assert check_stats(record(0)) == []
    bad = record(0)
    del bad["sha256"]
    assert check_stats(bad) == ["missing field 'sha256'"]
    assert shard_of_stats_key(stats_key(12)) == 12
    assert shard_of_stats_key("shards/000012.tar") is None
    assert shard_of_stats_key("shards/12.stats.json") is None


def test_manifest_and_summary():
    records = [record(1, ips=4.0), record(0, count=3, attempt=1)]
    table = pq.read_table(io.BytesIO(manifest_parquet(records)))
    assert table.num_rows == 2
    assert table.column("shard").to_pylist() == [0, 1]
    assert table.column("tar").to_pylist() == ["shards/000000.tar", "shards/000001.tar"]
    assert table.column("last_key").to_pylist() == ["000000_000002", "000001_000003"]
    s = summarize(records, records[:1], seconds=2.0, planned_shards=3, planned_images=11)
    assert s["images"] == 7 and s["shards"] == 2 and s["generated_images"] == 4
    assert s["images_per_second"] == 2.0 and s["complete"] is False
    assert s["per_shard"]["images_per_second"]["max"] == 4.0
    assert json.loads(json.dumps(s)) == s
