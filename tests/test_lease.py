"""One writer per output: the lease (pipeline/lease.py) on a local folder and on S3 (conditional writes on the
moto server), a second run refused naming the holder, takeovers, and fencing of a worker whose run lost it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from accel.api import ArgenError
from jobs.cli import main as argen
from pipeline import layout, lease
from pipeline.sinks import LocalSink, S3Settings, S3Sink

BASE = ["model=var_tiny", "device=cpu", "data.classes=[1,2]", "data.per_class=1", "output.shard_size=1",
        "progress=false", "ray.num_workers=1"]


@pytest.fixture(params=["local", "s3"])
def sink(request, tmp_path):
    if request.param == "local":
        return LocalSink(tmp_path / "out")
    endpoint, bucket = request.getfixturevalue("s3_bucket")
    return S3Sink(f"s3://{bucket}/run", S3Settings(endpoint_url=endpoint, region="us-east-1"))


def test_one_holder_at_a_time_and_takeovers(sink, monkeypatch):
    first = lease.acquire(sink, ttl_s=30)
    assert lease.holds(sink, first.owner) and first.renew()
    with pytest.raises(ArgenError, match=r"is being written by another run [0-9a-f]{12} on .* \(pid \d+\), last "
                                         r"heartbeat \d+ s ago, expiring in \d+ s.*output.force_takeover=true"):
        lease.acquire(sink, ttl_s=30)
    second = lease.acquire(sink, ttl_s=30, force=True)
    assert lease.holds(sink, second.owner) and not lease.holds(sink, first.owner)
    assert not first.renew() and first.lost.is_set()
    first.release()  # not its lease any more: left alone
    assert lease.holds(sink, second.owner)
    second.release()
    assert not sink.exists(layout.LEASE)

    third = lease.acquire(sink, ttl_s=30)
    clock = lease._now()
    monkeypatch.setattr(lease, "_now", lambda: clock + 31)  # its heartbeat stopped 31 s ago: expired
    assert not lease.holds(sink, third.owner)
    fourth = lease.acquire(sink, ttl_s=30)
    assert json.loads(sink.read(layout.LEASE))["owner"] == fourth.owner


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    sink = LocalSink(tmp_path / "out")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = lease.acquire(sink, ttl_s=600)
    record = json.loads(sink.read(layout.LEASE))
    record["pid"] = int(dead.stdout)  # a driver that was killed
    sink.write(layout.LEASE, json.dumps(record).encode())
    taker = lease.acquire(sink, ttl_s=600)
    assert lease.holds(sink, taker.owner) and not lease.holds(sink, held.owner)


@pytest.mark.slow
def test_a_second_run_is_refused_and_a_forced_one_fences_the_first(ray_cluster, tmp_path, capsys):
    out = tmp_path / "out"
    holder = lease.acquire(LocalSink(out), ttl_s=60)  # a run in progress elsewhere
    with pytest.raises(SystemExit) as e:
        argen(["generate", *BASE, f"output.uri={out}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"is being written by another run {holder.owner[:12]}" in err
    assert not (out / "run.json").exists()

    argen(["generate", *BASE, f"output.uri={out}", "output.force_takeover=true"])
    assert not holder.renew() and holder.lost.is_set()  # the first run learns it lost the output
    assert not (out / layout.LEASE).exists()  # released at the end
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["generated_images"] == 2


def test_a_worker_without_the_lease_commits_nothing(tmp_path):
    from hydra import compose, initialize_config_dir

    from jobs.common import CONF_DIR
    from pipeline.driver import prepare, worker_spec
    from pipeline.worker import ShardWorker

    out = tmp_path / "out"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*BASE, f"output.uri={out}"])
    job = prepare(cfg, take_lease=True)
    worker = ShardWorker(worker_spec(cfg, job.sink, 0, lease_owner=job.lease.owner))
    worker.run_shard(job.plan.shard(0))
    assert (out / "shards" / "000000.stats.json").exists()
    lease.acquire(job.sink, ttl_s=60, force=True)  # another run takes the output
    with pytest.raises(lease.LeaseLost, match="shard 1 not committed"):
        worker.run_shard(job.plan.shard(1))
    assert not (out / "shards" / "000001.stats.json").exists()


@pytest.mark.heavy
def test_two_runs_started_at_once_generate_each_image_once(tmp_path):
    out = tmp_path / "out"
    argen_bin = str(Path(sys.executable).parent / "argen")
    command = [argen_bin, "generate", "model=var_toy", "device=cpu", "data.per_class=1", "output.shard_size=2",
               "progress=false", f"output.uri={out}"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(r.wait(timeout=400), r.stdout.read(), r.stderr.read()) for r in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "is being written by another run" in refused
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["generated_images"] == 10
