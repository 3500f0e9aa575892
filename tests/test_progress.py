"""Progress at batch granularity: the workers tell a ProgressBoard actor after every batch; the driver's bar
counts those images before their shard commits."""
from __future__ import annotations

import pytest

from pipeline.progress import Progress, ProgressBoard


def test_the_bar_moves_with_batches_and_never_back():
    board = ProgressBoard()
    bar = Progress(total_images=8, total_shards=2, done_shards=0, enabled=False)
    board.update(0, 0, 1)
    board.update(1, 0, 3)
    bar.batches(board.partial())
    assert bar.position == 4  # rate and ETA from the first batch, not the first shard
    board.update(1, 1, 1)  # shard 1 failed after 3 images; its retry has made 1
    bar.batches(board.partial())
    assert board.partial() == {0: 1, 1: 1} and bar.position == 4  # the bar does not go back
    bar.shard_done(0, 4)
    board.forget(0)
    bar.batches(board.partial())
    assert bar.position == 5 and bar.done_shards == 1
    bar.shard_done(1, 4)
    assert bar.position == 8


@pytest.mark.slow
def test_a_worker_reports_every_batch(ray_cluster, tmp_path):
    import ray
    from hydra import compose, initialize_config_dir

    from jobs.common import CONF_DIR
    from pipeline.driver import prepare, worker_spec
    from pipeline.worker import ShardWorker

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=var_tiny", "device=cpu", "data.classes=[1,2,3]",
                                           "data.per_class=1", "output.shard_size=3", "batch_size=1",
                                           f"output.uri={tmp_path / 'out'}"])
    job = prepare(cfg)

    @ray.remote
    class Board(ProgressBoard):
        def history(self) -> list:
            return self.seen

        def update(self, shard: int, attempt: int, images: int) -> None:
            self.seen = getattr(self, "seen", []) + [(shard, attempt, images)]
            super().update(shard, attempt, images)

    board = Board.remote()
    worker = ShardWorker(worker_spec(cfg, job.sink, 0, progress=board))
    worker.run_shard(job.plan.shard(0))
    assert ray.get(board.history.remote()) == [(0, 0, 1), (0, 0, 2), (0, 0, 3)]


@pytest.mark.heavy  # Ray exports metrics every few seconds: up to ~30 s of waiting
def test_progress_is_a_ray_metric(ray_cluster):
    """argen_images_generated reaches the node's Prometheus endpoint (what the dashboard's Metrics view reads)."""
    import time
    import urllib.request

    import ray

    board = ray.remote(ProgressBoard).options(num_cpus=0).remote("run-metrics")
    ray.get(board.update.remote(0, 0, 5))
    port = ray._private.worker.global_worker.node.metrics_export_port
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:
        ray.get(board.update.remote(0, 0, 5 + int(time.monotonic() - deadline + 60)))
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if "argen_images_generated" in text and "run-metrics" in text:
            break
        time.sleep(2)
    lines = [line for line in text.splitlines() if "argen_images_generated" in line and "run-metrics" in line]
    assert lines and float(lines[-1].rsplit(" ", 1)[1]) >= 5, text[-2000:]
