"""ray.address with a stale address file: the one a `ray start --head` leaves behind when it is killed.

Each run is `argen generate` in a subprocess whose RAY_TMPDIR is a fresh folder holding such a file, in a
PID namespace of its own (`unshare`): Ray's "auto" also looks for running GCS processes and would find the
test session's cluster, so the subprocess sees a machine where no Ray runs. A live head is in
tests/test_submit.py.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARGEN = Path(sys.executable).parent / "argen"
ALONE = ["unshare", "--pid", "--fork", "--mount-proc"]  # root, as this suite runs (CI included)
SMALL = ["model=var_tiny", "device=cpu", "data.classes=[5]", "data.per_class=1", "output.shard_size=1",
         "batch_size=1", "progress=false"]


@pytest.fixture()
def stale_ray_tmpdir():
    """A Ray temp folder whose ray_current_cluster names a head that is not there (a port nobody listens on)."""
    folder = tempfile.mkdtemp(prefix="argen-rs-", dir="/tmp")  # short: Ray's socket paths must fit
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    Path(folder, "ray").mkdir()
    Path(folder, "ray", "ray_current_cluster").write_text(f"127.0.0.1:{port}")  # where Ray reads it
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def generate(ray_tmpdir: str, address: str, out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=ray_tmpdir, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run([*ALONE, str(ARGEN), "generate", *SMALL, f"ray.address={address}", f"output.uri={out}"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=400)


@pytest.mark.heavy  # ~55 s: a whole argen generate in a fresh process that starts its own Ray
@pytest.mark.timeout(500)
def test_null_address_starts_its_own_ray_despite_a_stale_address_file(stale_ray_tmpdir, tmp_path):
    run = generate(stale_ray_tmpdir, "null", tmp_path / "out")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    for noise in ("Token authentication is enabled", "Generated new authentication token", "Started a local Ray"):
        assert noise not in run.stdout + run.stderr  # a local run is quiet: Ray's lines stay in its log files
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["complete"] is True and report["images"] == 1


@pytest.mark.timeout(200)
def test_auto_address_with_a_stale_address_file_fails_fast(stale_ray_tmpdir, tmp_path):
    run = generate(stale_ray_tmpdir, "auto", tmp_path / "out")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    port = Path(stale_ray_tmpdir, "ray", "ray_current_cluster").read_text().rpartition(":")[2]
    assert ("argen generate: error: cannot start or join Ray: ray.address=auto: nothing answers at the address Ray "
            "recorded for its last `ray start` (") in run.stderr
    assert f":{port}) (a head that was stopped without `ray stop`" in run.stderr  # Ray's host: the node's IP
    assert "ray.address=null" in run.stderr and "`ray stop`" in run.stderr  # the fixes
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "shards").exists() or not any((tmp_path / "out" / "shards").glob("*.stats.json"))


@pytest.mark.timeout(200)
def test_auto_address_without_any_cluster_is_an_argen_error(stale_ray_tmpdir, tmp_path):
    Path(stale_ray_tmpdir, "ray", "ray_current_cluster").unlink()
    run = generate(stale_ray_tmpdir, "auto", tmp_path / "out")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert "ray.address=auto: no Ray cluster is running on this machine" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.timeout(200)
def test_unreachable_address_is_an_argen_error(stale_ray_tmpdir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = generate(stale_ray_tmpdir, f"ray://127.0.0.1:{port}", tmp_path / "out")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert f"cannot start or join Ray: ray.address=ray://127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr
