"""ShardScheduler's retry logic on real Ray actors, with a scripted worker double (no generator).

The double is only for the scheduling rules: a shard that raises is retried on another actor, the
retry limit ends the run naming the shard, and a bad-input error (ArgenError) ends it at once. What
real workers do (and dying processes) is covered end to end in test_pipeline_e2e.py.
"""
from __future__ import annotations

import time
import types

import pytest

from accel.api import ArgenError
from pipeline.scheduler import ShardFailed, ShardScheduler

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class ScriptedWorkerDouble:
    """Test double of pipeline.worker.ShardWorker: fails shards as scripted, else returns a record."""

    def __init__(self, name: str, script: dict[int, tuple[str, int]]):
        self.name, self.script = name, script  # shard -> (error kind, attempts that fail)

    def load(self) -> dict:
        return {"worker": self.name, "device": "none"}

    def run_shard(self, task, attempt: int) -> dict:
        kind, failing = self.script.get(task.shard, ("", 0))
        if attempt < failing:
            if kind == "argen":
                raise ArgenError(f"bad condition in shard {task.shard}")
            raise RuntimeError(f"scripted failure of shard {task.shard} attempt {attempt} on {self.name}")
        return {"shard": task.shard, "count": task.count, "attempt": attempt, "worker": self.name}


def tasks(n: int) -> list:
    return [types.SimpleNamespace(shard=s, count=2) for s in range(n)]


def make_factory(ray, script):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in Ray workers
    remote = ray.remote(ScriptedWorkerDouble)
    return lambda i: remote.options(num_cpus=0, max_concurrency=2).remote(f"w{i}", script)


def run_scheduler(ray, script, n=4, max_attempts=3):
    done = []
    sched = ShardScheduler(make_factory(ray, script), num_workers=2, max_attempts=max_attempts,
                           on_commit=done.append, poll_s=0.2)
    try:
        sched.start()
        sched.run(tasks(n))
    finally:
        sched.shutdown()
    return sched, done


def test_failed_shard_is_retried_on_another_actor(ray_cluster):
    sched, done = run_scheduler(ray_cluster, {1: ("runtime", 1), 3: ("runtime", 2)})
    by_shard = {r["shard"]: r for r in done}
    assert sorted(by_shard) == [0, 1, 2, 3] and len(done) == 4  # each shard committed exactly once
    assert by_shard[1]["attempt"] == 1 and by_shard[3]["attempt"] == 2
    failed_on = {f.split(" on worker ")[1].split(":")[0] for f in sched.failures if f.startswith("shard 1 ")}
    assert len(failed_on) == 1 and by_shard[1]["worker"] not in failed_on  # redone elsewhere
    workers_3 = [f.split(" on worker ")[1].split(":")[0] for f in sched.failures if f.startswith("shard 3 ")]
    assert len(workers_3) == 2 and workers_3[0] != workers_3[1]  # second try on the other actor
    assert len(sched.failures) == 3


def test_retry_limit_names_the_shard(ray_cluster):
    with pytest.raises(ShardFailed, match=r"shard 2 failed 2 time\(s\) \(ray.max_attempts=2\); last error: "
                                          r"RuntimeError: scripted failure of shard 2"):
        run_scheduler(ray_cluster, {2: ("runtime", 99)}, max_attempts=2)


def test_bad_input_in_a_worker_is_not_retried(ray_cluster):
    with pytest.raises(ArgenError, match="bad condition in shard 0"):
        run_scheduler(ray_cluster, {0: ("argen", 99)})


def test_an_actor_ray_cannot_place_holds_no_shards(ray_cluster):
    """A worker asking for resources the cluster lacks (GPUs on a CPU-only cluster, a lost node's replacement)
    is never given shards and does not hold the run up: start() goes on with the placed ones once they are
    ready (not after ray.start_timeout_s); with none placed it fails naming the setting instead of waiting for
    ever."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    remote = ray_cluster.remote(ScriptedWorkerDouble)

    def factory(placeable: set[int]):
        def make(i: int):
            extra = {} if i in placeable else {"resources": {"argen_test_no_such_resource": 1}}
            return remote.options(num_cpus=0, max_concurrency=2, **extra).remote(f"w{i}", {})
        return make

    done = []
    sched = ShardScheduler(factory({0}), num_workers=2, on_commit=done.append, poll_s=0.2, start_timeout_s=600)
    try:
        t0 = time.monotonic()
        infos = sched.start()  # returns 2t + 5 s after start, t = the placed actor's load time (long on a busy CPU)
        assert time.monotonic() - t0 < 300, "start() waited ray.start_timeout_s for the actor that cannot be placed"
        sched.run(tasks(5))
    finally:
        sched.shutdown()
    assert [i["worker"] for i in infos] == ["w0"] and sched.ready == set()  # shut down
    assert sorted(r["shard"] for r in done) == [0, 1, 2, 3, 4] and {r["worker"] for r in done} == {"w0"}
    sched = ShardScheduler(factory(set()), num_workers=2, poll_s=0.2, start_timeout_s=2)
    try:
        with pytest.raises(ShardFailed, match=r"no worker became ready within 2 s \(ray.start_timeout_s\)"):
            sched.start()
    finally:
        sched.shutdown()
