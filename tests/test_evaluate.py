"""jobs/evaluate.py: `argen evaluate` over a run's committed shards, against npz / run / image-folder references.

The runs here are small fake output folders written by the tests (stats.json + features.npy + logits.npy in
the layout the workers write); every expected number is computed in the test from the same arrays.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from accel.api import ArgenError
from jobs import evaluate as ev
from pipeline import evaluation, layout, quality
from pipeline.metrics import frechet_distance, inception_score, precision_recall
from pipeline.sinks import LocalSink, S3Settings, S3Sink

CONF_DIR = str(Path(__file__).resolve().parents[1] / "jobs" / "conf")


def compose(**overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(version_base=None, config_dir=CONF_DIR):
        return hydra_compose("config", overrides=[f"{k}={v}" for k, v in overrides.items()])


def scipy_fid(x: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    x = x.astype(np.float64)
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)


def direct_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID from np.cov statistics of two whole feature sets (the formula itself is checked against scipy in
    test_quality; with fewer samples than dimensions scipy's sqrtm is unreliable)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def features(seed: int, n: int, d: int = 24, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return (np.maximum(rng.standard_normal((n, d)) @ mix + shift, 0) * 2).astype(np.float32)


def write_run(sink, shards: list[np.ndarray], logits: list[np.ndarray] | None = None,
              consistency: list[float | None] | None = None, extractor: str = "toy", weights: str = "sha256:abc",
              counts: list[int] | None = None) -> None:
    """A run as the workers leave it: per shard features (+ logits), then the stats record last."""
    for i, f in enumerate(shards):
        sink.write(layout.features_key(i), quality.encode_npy(f))
        if logits is not None:
            sink.write(layout.logits_key(i), quality.encode_npy(logits[i]))
        q = {"feature_count": len(f), "class_consistency": None if consistency is None else consistency[i],
             "image_mean": 127.0, "image_std": 50.0, "extractor": extractor, "extractor_weights": weights}
        count = len(f) if counts is None else counts[i]
        sink.write(f"shards/{i:06d}.stats.json", json.dumps({"shard": i, "count": count, "quality": q}).encode())


def save_npz(path: Path, feats: np.ndarray | None = None, **arrays) -> Path:
    if feats is not None:
        f64 = feats.astype(np.float64)
        arrays.update(mu=f64.mean(0), sigma=np.cov(f64, rowvar=False))
    np.savez(path, **arrays)
    return path


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    from accel import checkpoints

    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path / "cache")
    return tmp_path / "cache"


# -- results ---------------------------------------------------------------------------------------

def test_fid_against_npz_statistics_merged_into_report(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    sink = LocalSink(run)
    shards = [features(0, 40), features(1, 40), features(2, 33)]
    write_run(sink, shards, consistency=[0.5, 1.0, None])
    sink.write("report.json", json.dumps({"images": 113, "seconds": 3.5}).encode())
    ref = features(9, 300, shift=0.3)
    npz = save_npz(tmp_path / "ref.npz", ref)

    out = ev.evaluate(compose(**{"output.uri": run, "eval.reference": npz}))

    expected = scipy_fid(np.concatenate(shards), ref.astype(np.float64).mean(0), np.cov(ref.astype(np.float64),
                                                                                          rowvar=False))
    assert out["fid"] == pytest.approx(expected, rel=1e-8)
    assert out["precision"] is None and out["recall"] is None and out["inception_score"] is None
    assert out["class_consistency"] == pytest.approx((0.5 * 40 + 1.0 * 40) / 80)
    assert out["extractor"] == "toy" and out["eval"]["resize"] == quality.ToyExtractor.resize
    assert out["eval"]["samples"] == 113 and out["eval"]["shards"] == 3
    report = json.loads((run / "report.json").read_text())
    assert report["images"] == 113 and report["seconds"] == 3.5  # the generate job's keys are kept
    for key in ("fid", "inception_score", "precision", "recall", "class_consistency", "extractor"):
        assert report[key] == out[key]
    printed = capsys.readouterr().out
    assert f"FID {expected:.4f}" in printed and "no arr_0 images" in printed


def test_run_as_reference_with_inception_score_and_precision_recall(tmp_path, cache_dir):
    run, ref_run = LocalSink(tmp_path / "run"), LocalSink(tmp_path / "ref")
    shards = [features(3, 30), features(4, 30), features(5, 25)]
    rng = np.random.default_rng(6)
    logits = [rng.standard_normal((len(f), 11)).astype(np.float32) * 2 for f in shards]
    write_run(run, shards, logits=logits)
    ref_shards = [features(7, 50, shift=0.1), features(8, 45, shift=0.1)]
    write_run(ref_run, ref_shards)

    out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": ref_run.uri, "eval.is_splits": 5}))

    x, y = np.concatenate(shards), np.concatenate(ref_shards).astype(np.float64)
    assert out["fid"] == pytest.approx(scipy_fid(x, y.mean(0), np.cov(y, rowvar=False)), rel=1e-8)
    p, r = precision_recall(x, y.astype(np.float32), k=3)
    assert (out["precision"], out["recall"]) == pytest.approx((p, r), abs=1e-12)
    mean, std = inception_score(np.concatenate(logits), splits=5)
    assert out["inception_score"] == pytest.approx(mean, rel=1e-12)
    assert out["inception_score_std"] == pytest.approx(std, rel=1e-9)
    assert out["eval"]["reference"]["kind"] == "run" and out["eval"]["reference"]["samples"] == 95
    # prc_max_samples: a deterministic subsample of each side
    capped = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": ref_run.uri,
                                    "eval.prc_max_samples": 20}))
    assert capped["eval"]["prc_samples"] == 20 and capped["eval"]["reference"]["prc_samples"] == 20
    assert capped["fid"] == pytest.approx(out["fid"], rel=1e-12)  # FID always uses every sample


def write_pngs(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:04d}.png")


def test_image_folder_reference_with_toy_extractor_is_cached(tmp_path, cache_dir):
    rng = np.random.default_rng(10)
    toy = quality.make_extractor("toy", None, "cpu")
    run_images = rng.integers(0, 256, (36, 24, 24, 3), dtype=np.uint8)
    run_images[::2] //= 3  # two kinds of images, so the features spread out
    f_run, _ = toy(run_images)
    run = LocalSink(tmp_path / "run")
    write_run(run, [f_run[:20], f_run[20:]], weights=toy.weights)
    ref_images = rng.integers(0, 200, (30, 24, 24, 3), dtype=np.uint8)
    odd = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)  # another size: batched separately
    write_pngs(tmp_path / "ref", ref_images)
    write_pngs(tmp_path / "ref" / "more", odd)

    cfg = compose(**{"output.uri": run.uri, "eval.reference": tmp_path / "ref", "device": "cpu"})
    first = ev.evaluate(cfg)
    second = ev.evaluate(cfg)

    f_ref = np.concatenate([toy(ref_images)[0], toy(odd)[0]]).astype(np.float64)
    # files are read sorted by path: ref/0000.png ... ref/0029.png, then ref/more/*.png
    assert first["fid"] == pytest.approx(direct_fid(f_run, f_ref), rel=1e-6) and first["fid"] > 1e-3
    p, r = precision_recall(f_run, f_ref.astype(np.float32), k=3)
    assert (first["precision"], first["recall"]) == pytest.approx((p, r), abs=1e-12)
    assert first["eval"]["reference"]["cached"] is False and second["eval"]["reference"]["cached"] is True
    assert second["fid"] == first["fid"] and second["precision"] == first["precision"]
    assert len(list((cache_dir / "eval").glob("ref-*.npz"))) == 1
    # a changed image is a different reference: recomputed, not served from the cache
    write_pngs(tmp_path / "ref", ref_images[:1] // 2)
    third = ev.evaluate(cfg)
    assert third["eval"]["reference"]["cached"] is False and third["fid"] != first["fid"]


def toy_run_and_images(tmp_path, seed: int, references: int):
    """A 25-sample run with toy features, and `references` other images with their toy features."""
    rng = np.random.default_rng(seed)
    toy = quality.make_extractor("toy", None, "cpu")
    f_run, _ = toy(rng.integers(0, 256, (25, 20, 20, 3), dtype=np.uint8) // np.uint8(2))
    run = LocalSink(tmp_path / "run")
    write_run(run, [f_run], weights=toy.weights)
    arr_0 = rng.integers(0, 256, (references, 20, 20, 3), dtype=np.uint8)
    return run, f_run, arr_0, toy(arr_0)[0]


def test_npz_with_arr_0_images_gives_precision_recall(tmp_path, cache_dir):
    run, f_run, arr_0, f_ref = toy_run_and_images(tmp_path, seed=11, references=22)
    # an ADM batch compresses nothing, but a compressed one must stream too
    np.savez_compressed(tmp_path / "ref.npz", mu=f_ref.astype(np.float64).mean(0),
                        sigma=np.cov(f_ref.astype(np.float64), rowvar=False), arr_0=arr_0)

    out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": tmp_path / "ref.npz",
                                 "eval.batch_size": 8}))

    p, r = precision_recall(f_run, f_ref, k=3)
    assert (out["precision"], out["recall"]) == pytest.approx((p, r), abs=1e-12)
    assert out["fid"] == pytest.approx(direct_fid(f_run, f_ref), rel=1e-6) and out["fid"] > 1e-3
    assert out["eval"]["reference"]["samples"] == 22
    assert out["eval"]["reference"]["statistics"] == "mu/sigma as stored in the .npz"
    rows = list(evaluation.iter_npz_rows(tmp_path / "ref.npz", "arr_0", 5))
    assert [len(r) for r in rows] == [5, 5, 5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(rows), arr_0)


def test_npz_with_only_arr_0_gets_statistics_from_its_images(tmp_path, cache_dir, capsys):
    """OpenAI's evaluator computes a reference batch's statistics from arr_0 when it has no mu/sigma; so does
    argen, with the run's extractor, cached by the file's content."""
    run, f_run, arr_0, f_ref = toy_run_and_images(tmp_path, seed=12, references=30)
    np.savez(tmp_path / "images.npz", arr_0=arr_0)
    cfg = compose(**{"output.uri": run.uri, "eval.reference": tmp_path / "images.npz", "eval.batch_size": 8,
                     "eval.precision_recall": False})

    out = ev.evaluate(cfg)
    assert out["fid"] == pytest.approx(direct_fid(f_run, f_ref), rel=1e-6) and out["fid"] > 1e-3
    ref = out["eval"]["reference"]
    assert ref["statistics"] == "computed from its arr_0 (30 images) with the run's extractor toy"
    assert ref["cached"] is False and out["precision"] is None
    assert "FID statistics: computed from its arr_0 (30 images)" in capsys.readouterr().out
    assert ev.evaluate(cfg)["eval"]["reference"]["cached"] is True  # the second time from the cache


@pytest.mark.slow
def test_inception_plumbing_only_random_init_through_argen_evaluate(tmp_path, cache_dir):
    """Plumbing only (seeded random Inception weights, not a real FID): worker-side extraction and shard
    record, then `argen evaluate` with a folder reference, Inception Score from the stored logits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is several times faster under contention
    try:
        rng = np.random.default_rng(12)
        ex = quality.make_extractor("inception", {"inception_random_init": True}, "cpu")
        images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        feats, logits = ex(images)
        run = LocalSink(tmp_path / "run")
        run.write(layout.features_key(0), quality.encode_npy(feats))
        run.write(layout.logits_key(0), quality.encode_npy(logits))
        q = quality.shard_quality(feats, logits, [1, 2, 3, 4], images, extractor=ex)
        assert q["class_consistency"] is None  # Inception's 1008 outputs are not the model's class ids
        run.write("shards/000000.stats.json", json.dumps({"shard": 0, "count": 4, "quality": q}).encode())
        write_pngs(tmp_path / "ref", images)  # the same images: FID 0 only if evaluate built the same network

        out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": tmp_path / "ref",
                                     "eval.inception_random_init": "true", "eval.is_splits": 2}))
    finally:
        torch.set_num_threads(threads)
    assert out["extractor"] == "inception" and "299x299" in out["eval"]["resize"]
    assert abs(out["fid"]) < 1e-6 and out["precision"] == 1.0 and out["recall"] == 1.0
    assert out["inception_score"] == pytest.approx(inception_score(logits, splits=2)[0], rel=1e-12)
    assert "plumbing only" in out["eval"]["weights"]


def test_s3_run_is_read_and_its_report_written_back(tmp_path, cache_dir, s3_bucket):
    endpoint, bucket = s3_bucket
    sink = S3Sink(f"s3://{bucket}/runs/a", S3Settings(endpoint_url=endpoint, region="us-east-1"))
    shards = [features(13, 30), features(14, 30)]
    write_run(sink, shards)
    sink.write("shards/000005.tar", b"not a committed shard's features, ignored")
    ref = features(15, 200, shift=0.2)
    npz = save_npz(tmp_path / "ref.npz", ref)

    out = ev.evaluate(compose(**{"output.uri": sink.uri, "storage": "s3_compatible",
                                 "storage.endpoint_url": endpoint, "eval.reference": npz}))

    f64 = ref.astype(np.float64)
    assert out["fid"] == pytest.approx(scipy_fid(np.concatenate(shards), f64.mean(0), np.cov(f64, rowvar=False)),
                                       rel=1e-8)
    assert json.loads(sink.read("report.json"))["fid"] == out["fid"]


def test_cli_exit_codes(tmp_path, cache_dir, capsys):
    from jobs import cli

    run = LocalSink(tmp_path / "run")
    write_run(run, [features(16, 30)])
    npz = save_npz(tmp_path / "ref.npz", features(17, 60))
    assert cli.main(["evaluate", f"output.uri={run.uri}", f"eval.reference={npz}"]) == 0
    assert "fid" in json.loads((tmp_path / "run" / "report.json").read_text())
    assert cli.main(["evaluate", f"output.uri={run.uri}", f"eval.reference={tmp_path / 'missing.npz'}"]) == 2
    assert "eval.reference=" in capsys.readouterr().err


# -- bad input -------------------------------------------------------------------------------------

def test_features_file_whose_count_does_not_match_its_shard_is_rejected_by_name(tmp_path, cache_dir):
    run = LocalSink(tmp_path / "run")
    write_run(run, [features(18, 30), features(19, 29), features(20, 30)], counts=[30, 30, 30])
    npz = save_npz(tmp_path / "ref.npz", features(21, 60))
    with pytest.raises(ArgenError, match=r"shards/000001\.features\.npy holds 29 rows .* shards/000001\.stats\.json "
                                         r"says count=30"):
        ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz}))
    # logits likewise
    run2 = LocalSink(tmp_path / "run2")
    f = [features(22, 20), features(23, 20)]
    write_run(run2, f, logits=[np.zeros((20, 4), np.float32), np.zeros((19, 4), np.float32)])
    with pytest.raises(ArgenError, match=r"shards/000001\.logits\.npy has shape \(19, 4\)"):
        ev.evaluate(compose(**{"output.uri": run2.uri, "eval.is_splits": 2}))


def test_bad_references(tmp_path, cache_dir):
    run = LocalSink(tmp_path / "run")
    write_run(run, [features(24, 30)])
    cfg = lambda ref: compose(**{"output.uri": run.uri, "eval.reference": ref})  # noqa: E731
    neither = save_npz(tmp_path / "labels_only.npz", arr_1=np.zeros(4, np.int64))
    with pytest.raises(ArgenError, match=r"has neither 'mu'/'sigma' nor 'arr_0' arrays \(it holds: arr_1\)"):
        ev.evaluate(cfg(neither))
    bad_images = save_npz(tmp_path / "floats.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ArgenError, match=r"arr_0 has dtype float32 .* expected uint8 images"):
        ev.evaluate(cfg(bad_images))
    inception_sized = save_npz(tmp_path / "adm.npz", mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32))
    with pytest.raises(ArgenError, match=r"dimension mismatch: the run's features are 24-d \(toy\) but "
                                         r".*mu of shape \(2048,\)"):
        ev.evaluate(cfg(inception_sized))
    with pytest.raises(ArgenError, match="does not exist"):
        ev.evaluate(cfg(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ArgenError, match=r"is a \.txt file; expected an ADM-style \.npz"):
        ev.evaluate(cfg(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArgenError, match="holds 0 image"):
        ev.evaluate(cfg(tmp_path / "empty"))
    other = LocalSink(tmp_path / "other")
    write_run(other, [features(25, 30, d=16)], extractor="inception")
    with pytest.raises(ArgenError, match="features from the 'inception' extractor but the run's come from 'toy'"):
        ev.evaluate(cfg(other.uri))
    retrained = LocalSink(tmp_path / "retrained")
    write_run(retrained, [features(25, 30)], weights="sha256:def")
    with pytest.raises(ArgenError, match="made with weights sha256:def but the run's were made with sha256:abc"):
        ev.evaluate(cfg(retrained.uri))
    assert not (tmp_path / "run" / "report.json").exists()  # nothing written on bad input


def test_missing_and_uncommitted_feature_files_are_listed(tmp_path, cache_dir):
    npz = save_npz(tmp_path / "ref.npz", features(26, 80))
    run = LocalSink(tmp_path / "run")
    write_run(run, [features(27, 20), features(28, 20), features(29, 20)], extractor=None)
    run.delete("shards/000002.features.npy")
    with pytest.raises(ArgenError, match=r"committed shards without features: shards/000002\.features\.npy; .*"
                                         r"pass eval.features=inception .* argen evaluate computes them"):
        ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz}))

    run = LocalSink(tmp_path / "run2")
    write_run(run, [features(27, 20), features(28, 20)])
    run.write("shards/000007.features.npy", quality.encode_npy(features(30, 20)))  # written, never committed
    run.write("shards/000009.features.npy", quality.encode_npy(features(31, 20)))
    with pytest.raises(ArgenError, match=r"uncommitted shards .*: shards/000007\.features\.npy, "
                                         r"shards/000009\.features\.npy; finish the run"):
        ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz}))
    out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz, "eval.allow_partial": "true"}))
    assert out["eval"]["samples"] == 40
    assert out["eval"]["uncommitted_skipped"] == ["shards/000007.features.npy", "shards/000009.features.npy"]


def test_a_run_with_planned_shards_not_committed_is_refused(tmp_path, cache_dir):
    """A run stopped before its last shards started leaves no file for them: run.json's plan says how many there
    are, and the FID of the shards committed so far is not the run's FID unless eval.allow_partial says so."""
    npz = save_npz(tmp_path / "ref.npz", features(26, 80))
    run = LocalSink(tmp_path / "run")
    write_run(run, [features(27, 20), features(28, 20)])
    run.write("run.json", json.dumps({"plan": {"num_shards": 5, "num_samples": 100}}).encode())
    with pytest.raises(ArgenError, match=r"3 of its 5 planned shards are not committed \(shards 000002, 000003, "
                                         r"000004\), so its FID would be of 40 samples, not the planned 100"):
        ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz}))
    out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz, "eval.allow_partial": "true"}))
    assert out["eval"]["samples"] == 40
    write_run(run, [features(27, 20), features(28, 20), features(29, 20), features(30, 20), features(31, 20)])
    assert ev.evaluate(compose(**{"output.uri": run.uri, "eval.reference": npz}))["eval"]["samples"] == 100


def test_too_few_samples_no_shards_and_mixed_extractors(tmp_path, cache_dir):
    npz = save_npz(tmp_path / "ref.npz", features(32, 60))
    one = LocalSink(tmp_path / "one")
    write_run(one, [features(33, 1)])
    with pytest.raises(ArgenError, match="has 1 committed sample"):
        ev.evaluate(compose(**{"output.uri": one.uri, "eval.reference": npz}))
    empty = tmp_path / "empty"
    (empty / "shards").mkdir(parents=True)
    with pytest.raises(ArgenError, match="has no committed shards"):
        ev.evaluate(compose(**{"output.uri": empty, "eval.reference": npz}))
    mixed = LocalSink(tmp_path / "mixed")
    write_run(mixed, [features(34, 10), features(35, 10)])
    rec = json.loads(mixed.read("shards/000001.stats.json"))
    rec["quality"]["extractor_weights"] = "sha256:other"
    mixed.write("shards/000001.stats.json", json.dumps(rec).encode())
    with pytest.raises(ArgenError, match="mixes features from different extractors"):
        ev.evaluate(compose(**{"output.uri": mixed.uri, "eval.reference": npz}))
    two = LocalSink(tmp_path / "two")
    write_run(two, [features(36, 10)])
    with pytest.raises(ArgenError, match="eval.features='inception' but the run's features were made by 'toy'"):
        ev.evaluate(compose(**{"output.uri": two.uri, "eval.features": "inception"}))


def test_features_missing_from_a_run_are_computed_from_its_tars_once(tmp_path, cache_dir, capsys):
    """A run generated without eval.features: `argen evaluate eval.features=toy` computes the features and
    logits from the shards' PNGs, as the workers would have, stores them with the extractor in the stats
    records, and the next evaluation reads them instead."""
    from accel.toy.data import ToyShapes, to_uint8_images
    from pipeline.shards import ShardTarWriter, sha256_hex

    x, labels = ToyShapes(seed=5).batch(0, 30)
    images, labels = to_uint8_images(x), labels.numpy()
    run = LocalSink(tmp_path / "run")
    for shard, (lo, hi) in enumerate([(0, 16), (16, 30)]):
        tar = ShardTarWriter()
        for i in range(lo, hi):
            tar.add(f"{shard:06d}_{i - lo:06d}", images[i], {"condition": int(labels[i]), "image_size": 32})
        data = tar.finish()
        run.write(f"shards/{shard:06d}.tar", data)
        record = {"shard": shard, "count": hi - lo, "model": "var_toy", "sha256": sha256_hex(data),
                  "quality": {"feature_count": 0, "class_consistency": None, "image_mean": 1.0, "image_std": 2.0}}
        run.write(f"shards/{shard:06d}.stats.json", json.dumps(record).encode())
    with pytest.raises(ArgenError, match="committed shards without features"):
        ev.evaluate(compose(**{"output.uri": run.uri}))

    out = ev.evaluate(compose(**{"output.uri": run.uri, "eval.features": "toy"}))
    extractor = quality.make_extractor("toy", compose().eval, "cpu")
    expected_feats, expected_logits = extractor(images)
    got = np.concatenate([quality.decode_npy(run.read(layout.features_key(s)), "f") for s in (0, 1)])
    np.testing.assert_allclose(got, expected_feats, rtol=1e-5, atol=1e-5)
    expected_cc = float(np.mean(np.argmax(expected_logits, 1) == labels))
    assert out["class_consistency"] == pytest.approx(expected_cc) and out["eval"]["features_computed_here"] == 2
    record = json.loads(run.read("shards/000001.stats.json"))
    assert record["quality"]["extractor"] == "toy" and record["quality"]["extractor_weights"] == extractor.weights
    assert record["quality"]["image_mean"] == 1.0 and record["quality"]["feature_image_size"] == 32
    assert "features of shard 000001 computed from its images (2 of 2)" in capsys.readouterr().out
    again = ev.evaluate(compose(**{"output.uri": run.uri}))  # read back, not computed again
    assert again["eval"]["features_computed_here"] == 0 and again["class_consistency"] == out["class_consistency"]
    run.write("shards/000001.tar", b"not the tar")
    run.delete(layout.features_key(1))
    with pytest.raises(ArgenError, match=r"shards/000001.tar does not match the sha256 in its stats record; the shard "
                                         r"is damaged: delete shards/000001.stats.json and run the same generate"):
        ev.evaluate(compose(**{"output.uri": run.uri}))
    run.delete("shards/000001.tar")
    with pytest.raises(ArgenError, match=r"shard 000001 is committed but shards/000001.tar is missing"):
        ev.evaluate(compose(**{"output.uri": run.uri}))


def test_features_computed_later_use_the_size_the_workers_would_have():
    """LlamaGen's 384-px models are evaluated at 256 (the release's --image-size-eval), eval.image_size overrides,
    and once a run has features at one size, later ones follow it; two sizes in one run are refused."""
    from types import SimpleNamespace

    side = evaluation._eval_side
    assert side({}, "llamagen_xl_384", 384, set()) == 256 and side({}, "var_d16", 256, set()) is None
    assert side({"image_size": 299}, "var_d16", 256, set()) == 299 and side({}, "no_such_model", 64, set()) is None
    assert side({}, "var_d16", 256, {128}) == 128 and side({}, "llamagen_xl_384", 384, {384}) is None
    with pytest.raises(ArgenError, match=r"eval.image_size=299 but the run's other features were computed at 256 px"):
        side({"image_size": 299}, "llamagen_xl_384", 384, {256})
    records = {i: {"count": 1, "quality": {"extractor": "toy", "extractor_weights": "w", "feature_image_size": s}}
               for i, s in enumerate([32, 32, 64])}
    scan = SimpleNamespace(stats=records, uri="run", run_json=None)
    assert evaluation.recorded_feature_sizes(scan) == {32, 64}
    with pytest.raises(ArgenError, match=r"mixes features computed at image sides \[32, 64\]"):
        evaluation.run_extractor_info(scan)
