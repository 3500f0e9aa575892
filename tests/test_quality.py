"""pipeline/metrics.py and pipeline/quality.py: statistics, FID, IS, precision/recall, extractors.

Every expected value is computed independently in the test (numpy/scipy/torch-fidelity), never typed in,
except where the mathematics fixes it (FID of a set with itself is 0, IS of confident uniform predictions
over K classes is K, IS of identical predictions is 1).
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
import scipy.linalg
import torch

from accel.toy.classifier import ToyClassifier

from accel.api import ArgenError
from pipeline import layout, metrics, quality
from pipeline.metrics import (FeatureStats, InceptionScoreAccumulator, fid_from_stats, frechet_distance,
                              inception_score, knn_radii, manifold_coverage, precision_recall)


@pytest.fixture()
def one_torch_thread():
    """On this shared 2-core machine one torch thread is several times faster than two under contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def relu_features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    """Post-ReLU-like correlated features (what Inception pool3 looks like), float32."""
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x = rng.standard_normal((n, d)) @ mix + shift
    return np.maximum(x, 0).astype(np.float32) * 3.0


def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """FID the textbook way: np.cov and scipy.linalg.sqrtm."""
    mu1, mu2 = x.astype(np.float64).mean(0), y.astype(np.float64).mean(0)
    s1, s2 = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64), rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# -- statistics and FID ----------------------------------------------------------------------------

def test_feature_stats_match_numpy_mean_and_unbiased_cov():
    x = relu_features(np.random.default_rng(0), 700, 48)
    st = FeatureStats.from_features(x, block=128)
    assert st.n == 700
    np.testing.assert_allclose(st.mean, x.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.covariance(), np.cov(x.astype(np.float64), rowvar=False), rtol=0, atol=1e-11)


@pytest.mark.parametrize("n,d", [(1500, 128), (90, 128)])  # full rank, and rank-deficient (n < d)
def test_fid_of_a_set_against_itself_is_zero(n, d):
    st = FeatureStats.from_features(relu_features(np.random.default_rng(1), n, d))
    assert abs(fid_from_stats(st, st)) < 1e-6
    # an independent copy of the same statistics (no shared arrays) as well
    st2 = FeatureStats(st.n, st.mean.copy(), st.m2.copy())
    assert abs(fid_from_stats(st, st2)) < 1e-6


def test_fid_from_merged_shards_equals_single_pass():
    rng = np.random.default_rng(2)
    x = relu_features(rng, 3001, 96)
    ref = FeatureStats.from_features(relu_features(rng, 1200, 96, shift=0.3))
    single = fid_from_stats(FeatureStats.from_features(x), ref)
    # uneven shards (one of a single sample), merged pairwise in a tree and streamed in order
    cuts = [0, 1, 8, 500, 1337, 2048, 3001]
    parts = [FeatureStats.from_features(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = FeatureStats.merge_all(parts)
    tree = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3])).merge(parts[4].merge(parts[5]))
    streamed = FeatureStats.empty(96)
    for a, b in zip(cuts[:-1], cuts[1:]):
        streamed.update(x[a:b])
    for st in (merged, tree, streamed):
        assert st.n == 3001
        assert abs(fid_from_stats(st, ref) - single) < 1e-9
    assert single > 1.0  # the two sets really differ, so the check above is not 0 == 0


def test_fid_agrees_with_direct_scipy_computation():
    rng = np.random.default_rng(3)
    x, y = relu_features(rng, 800, 64), relu_features(rng, 600, 64, shift=0.2)
    ours = fid_from_stats(FeatureStats.from_features(x), FeatureStats.from_features(y))
    expected = scipy_fid(x, y)
    assert ours == pytest.approx(expected, rel=1e-8, abs=1e-8)
    # and torch-fidelity's eigvals-based statistics -> metric on the same numbers
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    tf = fid_statistics_to_metric({"mu": x.astype(np.float64).mean(0), "sigma": np.cov(x.astype(np.float64), rowvar=False)},
                                  {"mu": y.astype(np.float64).mean(0), "sigma": np.cov(y.astype(np.float64), rowvar=False)},
                                  verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(tf, rel=1e-8)


@pytest.mark.slow
def test_fid_of_two_2048d_statistics_takes_seconds(one_torch_thread):
    """About 3 s on 2 idle cores (one eigh, two products, one eigvalsh; scipy's sqrtm takes about 43 s),
    under 10 s with one thread on this machine while other suites run; the bound leaves room for that."""
    rng = np.random.default_rng(4)
    d = 2048
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    b = a + 0.05 * rng.standard_normal((d, d)) / np.sqrt(d)
    s1, s2 = a @ a.T + 1e-3 * np.eye(d), b @ b.T + 1e-3 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    t = time.perf_counter()
    fid = frechet_distance(mu1, s1, mu2, s2)
    seconds = time.perf_counter() - t
    assert seconds < 30, f"FID of 2048-d statistics took {seconds:.1f} s"
    # (its value is checked against scipy in lower dimensions above); 0 <= tr sqrt(S1 S2) <= (tr S1 + tr S2)/2
    diff = (mu1 - mu2) @ (mu1 - mu2)
    assert diff < fid < diff + np.trace(s1) + np.trace(s2)


@pytest.mark.slow
def test_streaming_statistics_memory_bounded_at_50000_by_2048():
    """50,000 x 2048 float32 features in 50 shards: peak memory stays near a few d x d matrices,
    far below holding the features (400 MB float32, 800 MB float64)."""
    d, shard, shards = 2048, 1000, 50
    st = FeatureStats.empty(d)
    tracemalloc.start()
    try:
        for s in range(shards):
            x = np.random.default_rng(s).random((shard, d), dtype=np.float32)
            st.update(x)
            del x
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert st.n == shard * shards
    # one shard's float32 + float64 copy (24 MB) and ~4 d x d float64 matrices (128 MB)
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    # uniform [0,1) features: mean 1/2, variance 1/12 on the diagonal
    assert np.abs(st.mean - 0.5).max() < 0.01
    assert np.abs(np.diag(st.covariance()) - 1 / 12).max() < 0.005


def test_statistics_bad_input():
    st = FeatureStats.from_features(np.ones((1, 4), np.float32))
    with pytest.raises(ArgenError, match="at least 2 samples, got 1"):
        st.covariance()
    with pytest.raises(ArgenError, match="dimension 5 cannot be merged into statistics of dimension 4"):
        st.update(np.ones((3, 5), np.float32))
    with pytest.raises(ArgenError, match="dimension 4 and 3"):
        st.merge(FeatureStats.empty(3))
    with pytest.raises(ArgenError, match="NaN or inf"):
        FeatureStats.from_features(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ArgenError, match=r"dimension mismatch: samples have dimension 3 but reference has 4"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ArgenError, match=r"covariance has shape \(3, 3\); expected \(4, 4\)"):
        frechet_distance(np.zeros(4), np.eye(3), np.zeros(4), np.eye(4))


# -- Inception Score -------------------------------------------------------------------------------

def test_inception_score_on_known_logits():
    k, splits = 7, 5
    labels = np.tile(np.arange(k), splits * 3)          # every split holds every class equally often
    confident = np.where(np.eye(k)[labels] > 0, 60.0, 0.0)
    mean, std = inception_score(confident, splits=splits, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-9) and std < 1e-9
    same = np.tile(np.random.default_rng(5).standard_normal(k), (40, 1))  # identical predictions: no information
    mean, std = inception_score(same, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_torch_fidelity_and_streams():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(6).standard_normal((503, 1008)).astype(np.float32) * 3
    logits[np.arange(503), np.arange(503) // 51] += 20  # samples grouped by class: the order matters
    expected = isc_features_to_metric(torch.from_numpy(logits), splits=10)  # torch-fidelity's defaults: shuffled
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(expected["inception_score_mean"], rel=1e-10)
    assert std == pytest.approx(expected["inception_score_std"], rel=1e-8, abs=1e-12)
    in_order = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert inception_score(logits, splits=10, shuffle=False) == pytest.approx(
        (in_order["inception_score_mean"], in_order["inception_score_std"]), rel=1e-8)
    assert in_order["inception_score_mean"] < 0.5 * mean  # splits of one or two classes score far lower
    acc = InceptionScoreAccumulator(503, 10)
    for a, b in [(0, 1), (1, 77), (77, 300), (300, 503)]:  # batches that straddle split borders
        acc.update(logits[a:b])
    assert acc.result() == pytest.approx((mean, std), rel=1e-12)


def test_inception_score_bad_input():
    with pytest.raises(ArgenError, match="needs at least 10 samples, got 4"):
        inception_score(np.zeros((4, 3)), splits=10)
    acc = InceptionScoreAccumulator(20, 2)
    acc.update(np.zeros((10, 3)))
    with pytest.raises(ArgenError, match="4 classes cannot join logits with 3"):
        acc.update(np.zeros((10, 4)))
    with pytest.raises(ArgenError, match="expected 20 samples but got 10"):
        acc.result()


# -- precision / recall ----------------------------------------------------------------------------

def clusters(rng: np.random.Generator, centers: list[float], n: int, d: int = 8) -> np.ndarray:
    out = [rng.standard_normal((n, d)) + np.eye(d)[0] * c for c in centers]
    return np.concatenate(out).astype(np.float32)


def test_precision_recall_on_synthetic_clusters():
    rng = np.random.default_rng(7)
    real = clusters(rng, [-10.0, 10.0], 300, d=4)
    # same distribution: both high
    p_same, r_same = precision_recall(clusters(rng, [-10.0, 10.0], 300, d=4), real, k=3)
    assert p_same > 0.85 and r_same > 0.85
    # mode dropping: samples from one of the two real modes -> as precise, about half the recall
    p, r = precision_recall(clusters(rng, [10.0], 300, d=4), real, k=3)
    assert p > 0.85 and 0.35 < r < 0.6
    # far away: neither
    p, r = precision_recall(clusters(rng, [100.0], 300, d=4), real, k=3)
    assert p == 0.0 and r == 0.0
    # samples spread far wider than the reference: they cover it (recall) but mostly lie outside it
    wide = (rng.standard_normal((600, 4)) * 15).astype(np.float32)
    p, r = precision_recall(wide, real, k=3)
    assert p < 0.3 and r > 0.5


def test_precision_recall_equals_torch_fidelity_prc_with_small_blocks():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    rng = np.random.default_rng(8)
    gen = torch.from_numpy(relu_features(rng, 230, 16))
    real = torch.from_numpy(relu_features(rng, 190, 16, shift=0.1))
    expected = calculate_precision_recall_full(gen, real, neighborhood=3)
    # our blocked computation, with blocks that do not divide the sizes
    precision = manifold_coverage(gen, real, knn_radii(real, 3, col_block=37), col_block=41)
    recall = manifold_coverage(real, gen, knn_radii(gen, 3, col_block=53), col_block=29)
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(gen.numpy(), real.numpy(), k=3) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0  # a non-trivial case


def test_precision_recall_bad_input():
    with pytest.raises(ArgenError, match="samples have dimension 4 but the reference has 5"):
        precision_recall(np.zeros((10, 4), np.float32), np.zeros((10, 5), np.float32))
    with pytest.raises(ArgenError, match="k=3 needs more than 3 samples per set, got 3"):
        precision_recall(np.random.rand(10, 4).astype(np.float32), np.random.rand(3, 4).astype(np.float32))


# -- extractors ------------------------------------------------------------------------------------

def random_images(seed: int, n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_make_extractor_names():
    assert quality.make_extractor("none", None, "cpu") is None
    with pytest.raises(ArgenError, match=r"eval.features='clip' is not an extractor; choose one of \['inception', "
                                         r"'toy', 'none'\]"):
        quality.make_extractor("clip", None, "cpu")


def test_inception_needs_weights_and_says_where_to_get_them(tmp_path):
    with pytest.raises(ArgenError) as e:
        quality.make_extractor("inception", {}, "cpu")
    msg = str(e.value)
    assert "eval.inception_weights is not set" in msg
    assert quality.INCEPTION_WEIGHTS_URL in msg and "weights-inception-2015-12-05-6726825d.pth" in msg
    # the URL is the one torch-fidelity itself downloads from
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    assert quality.INCEPTION_WEIGHTS_URL == tfi.URL_INCEPTION_V3
    with pytest.raises(ArgenError, match="does not exist"):
        quality.make_extractor("inception", {"inception_weights": str(tmp_path / "nope.pth")}, "cpu")
    bad = tmp_path / "toy.pth"
    torch.save(ToyClassifier().state_dict(), bad)
    with pytest.raises(ArgenError, match="does not match torch-fidelity's Inception-v3"):
        quality.make_extractor("inception", {"inception_weights": str(bad)}, "cpu")


@pytest.mark.slow
def test_inception_plumbing_only_random_init_end_to_end(tmp_path, one_torch_thread):
    """Plumbing only (random weights, not a real FID): torch-fidelity's network, uint8 in, 2048-d pool3 and
    1008 logits out, batching does not change the result, and a weights file is loaded weights-only."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ex = quality.make_extractor("inception", {"inception_random_init": True, "batch_size": 2}, "cpu")
    assert isinstance(ex.net, FeatureExtractorInceptionV3)
    assert (ex.name, ex.dim, ex.num_classes, ex.class_aligned) == ("inception", 2048, 1008, False)
    assert "plumbing only" in ex.weights and "299x299" in ex.resize
    images = random_images(9, 3, size=40)
    feats, logits = ex(images)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32 and logits.shape == (3, 1008)
    assert np.isfinite(feats).all() and np.isfinite(logits).all() and feats.std() > 0
    # logits are torch-fidelity's logits_unbiased: the fc layer without its bias, applied to pool3
    w = ex.net.fc.weight.detach().numpy().astype(np.float64)
    np.testing.assert_allclose(logits, feats.astype(np.float64) @ w.T, rtol=1e-4, atol=1e-6)
    ex.batch_size = 8
    np.testing.assert_allclose(ex(images)[0], feats, rtol=1e-5, atol=1e-7)  # other batching, same features
    # the weights path: save these weights, load them back through eval.inception_weights
    path = tmp_path / "inception.pth"
    torch.save(ex.net.state_dict(), path)
    loaded = quality.make_extractor("inception", {"inception_weights": str(path)}, "cpu")
    assert loaded.weights == quality.state_dict_sha256(ex.net.state_dict())
    np.testing.assert_array_equal(loaded(images)[0], feats)
    with pytest.raises(ArgenError, match=r"expected uint8 \[N, H, W, 3\]"):
        ex(images.astype(np.float32))


def test_toy_extractor_is_the_trained_classifier_and_loads_another(tmp_path):
    images = random_images(10, 5, size=48)
    a = quality.make_extractor("toy", None, "cpu")
    b = quality.make_extractor("toy", {"batch_size": 2}, "cpu")
    fa, la = a(images)
    fb, lb = b(images)
    assert fa.shape == (5, 256) and la.shape == (5, 10) and a.class_aligned and a.num_classes == 10
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)
    assert a.weights == b.weights
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not reach the extractor
        np.testing.assert_array_equal(a(images)[0], fa)
    # the committed classifier recognises real ToyShapes images
    from accel.toy.data import ToyShapes, to_uint8_images

    x, y = ToyShapes(seed=5, length=20).batch(0, 20)
    _, logits = a(to_uint8_images(x))
    assert (logits.argmax(1) == y.numpy()).mean() >= 0.95
    # another classifier's checkpoint (e.g. other classes)
    net = ToyClassifier(num_classes=6).eval()
    path = tmp_path / "toy.pt"
    torch.save({"model": net.state_dict()}, path)
    c = quality.make_extractor("toy", {"toy_checkpoint": str(path)}, "cpu")
    fc, lc = c(images)
    assert lc.shape == (5, 6) and c.class_aligned and c.num_classes == 6 and c.weights != a.weights
    with torch.no_grad():
        ef, el = net.features_and_logits(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    np.testing.assert_allclose(fc, ef.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lc, el.numpy(), rtol=1e-5, atol=1e-6)
    torch.save({"head.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ArgenError, match="no 2-d 'head.weight'"):
        quality.make_extractor("toy", {"toy_checkpoint": str(tmp_path / "bad.pt")}, "cpu")


def test_shard_quality_record(tmp_path):
    images = random_images(11, 4, size=16)
    feats = np.random.default_rng(0).random((4, 256), dtype=np.float32)
    q = quality.shard_quality(feats, None, [1, 2, 3, 4], images)
    assert q["feature_count"] == 4 and q["class_consistency"] is None
    assert q["image_mean"] == pytest.approx(images.astype(np.float64).mean(), rel=1e-12)
    assert q["image_std"] == pytest.approx(images.astype(np.float64).std(), rel=1e-12)
    # class-aligned logits: argmax equals the condition for 3 of 4 samples
    logits = np.zeros((4, 5), np.float32)
    logits[[0, 1, 2, 3], [1, 2, 0, 4]] = 1.0
    conds = [1, 2, 3, 4]
    expected = float(np.mean(logits.argmax(1) == np.array(conds)))
    assert quality.shard_quality(feats, logits, conds, images, class_aligned=True)["class_consistency"] == expected
    torch.save(ToyClassifier(num_classes=5).state_dict(), tmp_path / "toy.pt")
    toy = quality.make_extractor("toy", {"toy_checkpoint": str(tmp_path / "toy.pt")}, "cpu")
    q = quality.shard_quality(feats, logits, conds, images, extractor=toy)
    assert q["class_consistency"] == expected and q["extractor"] == "toy" and q["extractor_weights"] == toy.weights
    # prompts, or logits that do not index class ids: no class-consistency
    assert quality.shard_quality(feats, logits, ["a", "b", "c", "d"], images, class_aligned=True)["class_consistency"] is None
    assert quality.shard_quality(feats, logits, conds, images, class_aligned=False)["class_consistency"] is None
    assert quality.shard_quality(None, None, conds, images)["feature_count"] == 0
    with pytest.raises(ArgenError, match=r"features have shape \(3, 256\); expected \[4, ...\]"):
        quality.shard_quality(feats[:3], None, conds, images)
    with pytest.raises(ArgenError, match="3 conditions for 4 images"):
        quality.shard_quality(feats, None, conds[:3], images)
    # class ids the classifier was not trained on: not defined, and said why
    q = quality.shard_quality(feats, logits, [1, 2, 3, 7], images, class_aligned=True)
    assert q["class_consistency"] is None and "outside the classifier's 5 classes" in q["class_consistency_absent"]


def test_npy_round_trip_refuses_pickles():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(quality.decode_npy(quality.encode_npy(x), "x"), x)
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ArgenError, match="not a readable .npy array"):
        quality.decode_npy(buf.getvalue(), "shards/000000.features.npy")
    assert layout.features_key(3) == "shards/000003.features.npy"
    assert layout.logits_key(12) == "shards/000012.logits.npy"
    assert metrics.trace_sqrt_product(np.eye(2), np.eye(2)) == pytest.approx(2.0)


def test_trace_sqrt_routes_agree_and_the_singular_case_takes_the_svd_route(monkeypatch):
    rng = np.random.default_rng(13)
    x, y = relu_features(rng, 900, 80), relu_features(rng, 700, 80, shift=0.2)
    s1, s2 = np.cov(x.astype(np.float64), rowvar=False), np.cov(y.astype(np.float64), rowvar=False)
    expected = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert metrics.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-10)
    assert metrics.trace_sqrt_product_svd(s1, s2) == pytest.approx(expected, rel=1e-10)
    # fewer samples than dimensions: singular covariance -> the singular-value route
    few = np.cov(x[:40].astype(np.float64), rowvar=False)
    calls = []
    real_svd = metrics.trace_sqrt_product_svd
    monkeypatch.setattr(metrics, "trace_sqrt_product_svd", lambda *a: calls.append(1) or real_svd(*a))
    assert metrics.trace_sqrt_product(few, few) == pytest.approx(np.trace(few), rel=1e-12)
    assert metrics.trace_sqrt_product(s1, few) == pytest.approx(np.trace(scipy.linalg.sqrtm(s1 @ few)).real,
                                                                rel=1e-6)
    assert len(calls) == 2


def test_class_consistency_is_also_counted_per_class():
    from pipeline.quality import classifier_quality

    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    q = classifier_quality(logits, [0, 0, 1, 1], aligned=True)
    assert q["class_consistency"] == 0.5
    assert q["class_consistency_by_class"] == {"0": [1, 2], "1": [1, 2]}
    assert "class_consistency_by_class" not in classifier_quality(logits, ["a", "b", "c", "d"], aligned=True)
