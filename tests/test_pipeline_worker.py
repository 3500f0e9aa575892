"""ShardWorker in this process (no Ray) with the real var_tiny: write order, record, reproducibility."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline import layout
from pipeline.plan import ShardTask, sample_seed
from pipeline.shards import decode_png, read_shard
from pipeline.sinks import LocalSink
from pipeline.worker import ShardWorker, WorkerSpec


class RecordingLocalSink(LocalSink):
    """A real LocalSink that also remembers the order of its writes."""

    def __init__(self, root):
        super().__init__(root)
        self.writes: list[str] = []

    def write(self, key: str, data: bytes) -> None:
        super().write(key, data)
        self.writes.append(key)


def task(shard: int, n: int = 3) -> ShardTask:
    start = shard * n
    return ShardTask(shard=shard, start=start, conditions=tuple(5 + i for i in range(n)),
                     seeds=tuple(sample_seed(0, start + i) for i in range(n)))


@pytest.fixture(scope="module")
def worker_factory():
    made = []

    def make(sink, **kw):
        w = ShardWorker(WorkerSpec(worker="w9", model="var_tiny", accel="none", device="cpu", batch_size=2, sink=sink,
                                   random_init=True, torch_threads=None, **kw))  # leave this process's threads
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def test_writes_tar_then_features_then_stats_last(tmp_path, worker_factory):
    sink = RecordingLocalSink(tmp_path)
    w = worker_factory(sink, features="toy", eval_cfg={"batch_size": 4})
    info = w.load()
    assert info["image_size"] == 256 and info["num_classes"] == 1000
    record = w.run_shard(task(4), attempt=2)
    # the toy extractor is a classifier, so its logits are written too (for the Inception Score)
    assert sink.writes == ["shards/000004.tar", "shards/000004.features.npy", "shards/000004.logits.npy",
                           "shards/000004.stats.json"]
    tar = sink.read("shards/000004.tar")
    assert record["sha256"] == hashlib.sha256(tar).hexdigest() and record["bytes"] == len(tar)
    assert record["count"] == 3 and record["attempt"] == 2 and record["worker"].startswith("w9@")
    assert record["quality"]["feature_count"] == 3 and record["feature_seconds"] > 0
    samples = read_shard(tar)
    assert [s["__key__"] for s in samples] == ["000004_000000", "000004_000001", "000004_000002"]
    assert [s["cls"] for s in samples] == [5, 6, 7]  # batches of 2 + 1, in order
    assert [s["json"]["index"] for s in samples] == [12, 13, 14]


def test_same_shard_same_bytes_and_no_dependence_on_other_shards(tmp_path, worker_factory):
    a, b = LocalSink(tmp_path / "a"), LocalSink(tmp_path / "b")
    wa, wb = worker_factory(a), worker_factory(b)
    wa.run_shard(task(0, n=1))
    wa.run_shard(task(1, n=2))
    wb.run_shard(task(1, n=2))  # a fresh worker that never saw shard 0
    assert a.read("shards/000001.tar") == b.read("shards/000001.tar")
    # quality without an extractor: streamed pixel moments equal the images' own
    images = np.stack([decode_png(s["png"]) for s in read_shard(a.read("shards/000001.tar"))])
    q = json.loads(a.read("shards/000001.stats.json"))["quality"]
    assert q["feature_count"] == 0
    assert q["image_mean"] == pytest.approx(images.mean()) and q["image_std"] == pytest.approx(images.std())


@pytest.mark.slow
def test_memory_stays_flat_over_many_shards(tmp_path, worker_factory):
    """Python-heap growth over 4 more shards stays far below one shard's pixels (a leak would hold them all)."""
    import tracemalloc

    w = worker_factory(LocalSink(tmp_path))
    one_shard_pixels = 256 * 256 * 3
    tracemalloc.start()
    try:
        w.run_shard(task(0, n=1))
        w.run_shard(task(1, n=1))
        base = tracemalloc.get_traced_memory()[0]
        for s in range(2, 6):
            w.run_shard(task(s, n=1))
        growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert growth < one_shard_pixels / 4, growth


def test_features_at_the_models_evaluation_size(tmp_path, worker_factory):
    """eval.image_size (or the model's, e.g. 256 for LlamaGen's 384-px models) resizes the images the extractor
    sees, bicubically on [-1, 1] as the release does before saving its FID samples; the tar keeps them whole."""
    import torch
    import torch.nn.functional as F

    from accel.api import to_uint8
    from accel.families.llamagen import CONFIGS
    from pipeline import quality

    assert CONFIGS["llamagen_xl_384"].eval_image_size == 256 and CONFIGS["llamagen_xl"].eval_image_size is None
    full = worker_factory(LocalSink(tmp_path / "full"), features="toy", eval_cfg={"batch_size": 4})
    full.load()
    small = worker_factory(LocalSink(tmp_path / "small"), features="toy", eval_cfg={"batch_size": 4, "image_size": 64})
    small.load()
    a, b = full.run_shard(task(1)), small.run_shard(task(1))
    assert a["sha256"] == b["sha256"]  # the same images are stored
    assert (a["quality"]["feature_image_size"], b["quality"]["feature_image_size"]) == (256, 64)
    fa, fb = (quality.decode_npy(w.spec.sink.read(layout.features_key(1)), "features") for w in (full, small))
    images = np.stack([decode_png(s["png"]) for s in read_shard(small.spec.sink.read("shards/000001.tar"))])
    np.testing.assert_allclose(fb, small.extractor(quality.resize_for_eval(images, 64))[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(fa, fb)
    # uint8 in, as the release's float-first resize, to within one level
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    release = to_uint8(F.interpolate(x, size=(64, 64), mode="bicubic")).astype(int)
    ours = quality.resize_for_eval(to_uint8(x), 64).astype(int)
    assert np.abs(release - ours).max() <= 1
    with pytest.raises(Exception, match="eval.image_size='big'"):
        quality.eval_image_size({"image_size": "big"}, None, small.generator.image_size)
    # the generated side: no resize
    assert quality.eval_image_size({"image_size": 256}, None, small.generator.image_size) is None
