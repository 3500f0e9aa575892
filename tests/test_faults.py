"""Faults, end to end with the real var_tiny: several workers killed at once, the driver killed and
restarted, S3 requests failing or slow (a fault-injecting HTTP proxy in front of moto), a local disk
that fills up. After each: every committed shard is whole and matches its stats (`argen verify`'s
checks) and nothing half-written is visible; after a killed driver, the same command completes the run.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.cli import main as argen
from jobs.verify import verify_output
from pipeline.sinks import LocalSink, S3Settings, S3Sink, StorageUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parent.parent
BASE = ["model=var_tiny", "device=cpu", "batch_size=2", "progress=false", "ray.num_workers=2",
        "ray.cpus_per_worker=1", "output.shard_size=2"]


def plan(classes: int, per_class: int = 1) -> list[str]:
    return ["data.classes=null", f"data.num_classes={classes}", f"data.per_class={per_class}"]


def stats_files(out: Path) -> dict[int, dict]:
    found = {}
    for p in sorted((out / "shards").glob("*.stats.json")):
        try:
            found[int(p.name[:6])] = json.loads(p.read_text())
        except ValueError:  # being renamed into place right now
            pass
    return found


def assert_complete(sink, shards: int, images: int) -> None:
    verdict = verify_output(sink)
    assert verdict.ok, verdict.problems
    assert verdict.committed_shards == shards and verdict.images == images


# -- workers ----------------------------------------------------------------------------------

@pytest.mark.heavy  # ~27 s; one killed worker is covered in make test (test_pipeline_e2e)
def test_several_workers_killed_at_once_mid_shard(ray_cluster, tmp_path, capsys):
    """Both actors die together while each holds shards in flight; replacements finish every shard once."""
    out = tmp_path / "out"
    killed: list[int] = []

    def killer():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pids = {}
            for record in stats_files(out).values():
                name, _, pid = record["worker"].rpartition(":")
                pids[name.split("@")[0]] = int(pid)
            if len(pids) == 2:  # both actors are running shards: kill them in the same instant
                for pid in pids.values():
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids.values())
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    argen(["generate", *BASE, *plan(8), f"output.uri={out}"])
    thread.join(timeout=5)
    assert len(killed) == 2, "the run ended before both workers had committed a shard"

    report = json.loads((out / "report.json").read_text())
    assert report["replaced_workers"] == 2 and report["complete"] is True
    died = [r for r in report["retries"] if "the worker process died" in r]
    assert len(died) >= 2  # every shard in flight on either actor was redone
    stats = stats_files(out)
    assert sorted(stats) == list(range(4))
    retried = [s for s, r in stats.items() if r["attempt"] > 0]
    # every death of a shard's worker cost that shard one attempt (a shard requeued onto the other actor
    # before its death was noticed can die twice), and each retried shard was committed exactly once
    assert sum(r["attempt"] for r in stats.values()) == len(died), (report["retries"], stats)
    assert len(retried) == report["retried_shards"] >= 1
    assert {int(r["worker"].rpartition(":")[2]) for s, r in stats.items() if s in retried}.isdisjoint(killed)
    assert report["images"] == report["generated_images"] == 8
    assert_complete(LocalSink(out), 4, 8)
    assert "argen generate: 4 shards, 8 images" in capsys.readouterr().out


# -- the driver -------------------------------------------------------------------------------

def test_driver_killed_mid_run_then_restarted(ray_cluster, tmp_path):
    """SIGKILL the driver process of `argen generate` on a running cluster after some shards committed
    (its actors die with it, as Ray's actors die with their owner); the same command again finishes the
    run: every shard exactly once, committed shards untouched."""
    out = tmp_path / "out"
    args = ["generate", *BASE, *plan(12), f"output.uri={out}"]
    address = ray_cluster.get_runtime_context().gcs_address
    total_cpus = ray_cluster.cluster_resources()["CPU"]
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        driver = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args, f"ray.address={address}"], cwd=REPO,
                                  stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while len(stats_files(out)) < 2:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no shard committed in 300 s"
            time.sleep(0.05)
    finally:
        driver.kill()  # SIGKILL: no clean-up, no manifest, no report
        driver.wait(timeout=30)
    # its actors are gone once the cluster has every CPU back; only then is the output quiet
    deadline = time.monotonic() + 60
    while ray_cluster.available_resources().get("CPU", 0) < total_cpus:
        assert time.monotonic() < deadline, "the killed driver's actors still hold CPUs after 60 s"
        time.sleep(0.2)
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.stats.json")}
    assert 2 <= len(before) < 6, f"{len(before)} shards committed before the kill; expected some, not all"
    assert not (out / "report.json").exists()  # the killed driver never finished

    argen(args)  # the same command again

    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["images"] == 12
    assert report["generated_shards"] == 6 - len(before)  # nothing committed was generated again
    for name, data in before.items():
        assert (out / "shards" / name).read_bytes() == data  # committed shards untouched
    # every shard exactly once: one tar and one stats file each, no temporary files, one manifest row each
    files = sorted(p.name for p in (out / "shards").iterdir())
    assert files == sorted([f"{s:06d}.tar" for s in range(6)] + [f"{s:06d}.stats.json" for s in range(6)])
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    assert [r["shard"] for r in manifest] == list(range(6))
    for r in manifest:
        tar = (out / r["tar"]).read_bytes()
        assert r["sha256"] == hashlib.sha256(tar).hexdigest() == json.loads(
            (out / f"shards/{r['shard']:06d}.stats.json").read_text())["sha256"]
    assert_complete(LocalSink(out), 6, 12)


# -- S3 errors ----------------------------------------------------------------------------------

class FaultyS3Proxy:
    """An HTTP proxy in front of an S3 server that fails or delays a share of requests.

    Every `every`-th distinct request (method + path + query) gets a fault, the kinds in turn:
      503       SlowDown, before forwarding (the request never reached the store)
      500       InternalError after forwarding (it did: the retry repeats a request that succeeded)
      reset     the connection is closed after forwarding, without an answer
      slow      forwarded after `slow_s` seconds (past the client's read timeout: a retried timeout)
    A retry of the same request goes through. `always` fails every request whose path ends with it.
    """

    KINDS = ("503", "500", "reset", "slow")

    def __init__(self, upstream: str, every: int = 3, slow_s: float = 2.5, always: str | None = None):
        self.upstream = upstream.split("://", 1)[1]
        self.every, self.slow_s, self.always = every, slow_s, always
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.distinct = 0
        self.faults: list[tuple[str, str, str]] = []  # (kind, method, path)
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length")}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                drop = ("connection", "keep-alive", "transfer-encoding") + (() if self.command == "HEAD"
                                                                          else ("content-length",))
                out = [(k, v) for k, v in r.getheaders() if k.lower() not in drop]
                conn.close()
                return r.status, out, data

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _error(self, status: int, code: str) -> None:
                xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                       f"<Message>injected by the test proxy</Message></Error>").encode()
                self._send(status, [("Content-Type", "application/xml")], xml)

            def _handle(self) -> None:
                body = self._body()
                kind = proxy.decide(self.command, self.path)
                if kind == "503":
                    return self._error(503, "SlowDown")
                if kind == "slow":
                    time.sleep(proxy.slow_s)
                status, headers, data = self._forward(body)
                if kind == "500":
                    return self._error(500, "InternalError")
                if kind == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def decide(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests += 1
            bare = path.split("?", 1)[0]
            if self.always and bare.endswith(self.always) and method in ("PUT", "POST"):
                self.faults.append(("503", method, path))
                return "503"
            key = f"{method} {path}"
            if key in self.seen:
                return None  # a retry goes through
            self.seen.add(key)
            self.distinct += 1
            if self.distinct % self.every:
                return None
            kind = self.KINDS[(self.distinct // self.every) % len(self.KINDS)]
            self.faults.append((kind, method, path))
            return kind

    def __enter__(self) -> "FaultyS3Proxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_s3_errors_and_delays_are_retried_nothing_partial_visible(ray_cluster, s3_bucket, tmp_path):
    endpoint, bucket = s3_bucket
    with FaultyS3Proxy(endpoint) as proxy:
        argen(["generate", *BASE, *plan(8), f"output.uri=s3://{bucket}/faulty", "storage=s3_compatible",
               f"storage.endpoint_url={proxy.endpoint}", "storage.read_timeout_s=1", "storage.max_attempts=5"])
    kinds = {k for k, _, _ in proxy.faults}
    assert kinds == set(FaultyS3Proxy.KINDS), proxy.faults  # every kind of fault really happened
    put_paths = [p for _, m, p in proxy.faults if m == "PUT"]
    assert any(p.endswith(".tar") for p in put_paths) or any(p.endswith(".stats.json") for p in put_paths)
    # read back directly from the store, past the proxy: every shard whole, nothing else
    sink = S3Sink(f"s3://{bucket}/faulty", S3Settings(endpoint_url=endpoint, region="us-east-1"))
    assert_complete(sink, 4, 8)
    assert sink.incomplete_uploads() == []
    keys = set(sink.list())
    assert keys == {"run.json", "manifest.parquet", "report.json", "report.html", "contact_sheet.png"} | {
        f"shards/{s:06d}.{ext}" for s in range(4) for ext in ("tar", "stats.json")}
    report = json.loads(sink.read("report.json"))
    assert report["complete"] is True and report["images"] == 8


def test_s3_multipart_through_faults_completes_or_leaves_nothing(s3_bucket):
    """Big objects (multipart) through the proxy: transient faults are retried to a correct object; a part
    that always fails aborts the upload, and neither the object nor an open upload is left."""
    endpoint, bucket = s3_bucket
    data = os.urandom(11 * 1024 * 1024)  # 3 parts of 5 MiB
    settings = dict(region="us-east-1", multipart_threshold_mb=5, multipart_chunksize_mb=5, max_attempts=3,
                    read_timeout_s=1)
    direct = S3Sink(f"s3://{bucket}/mp", S3Settings(endpoint_url=endpoint, region="us-east-1"))
    with FaultyS3Proxy(endpoint, every=2) as proxy:
        sink = S3Sink(f"s3://{bucket}/mp", S3Settings(endpoint_url=proxy.endpoint, **settings))
        sink.write("shards/000000.tar", data)
    assert any("uploadId" in p or "partNumber" in p for _, _, p in proxy.faults), proxy.faults
    assert direct.read("shards/000000.tar") == data and direct.incomplete_uploads() == []

    with FaultyS3Proxy(endpoint, every=10 ** 9, always="shards/000001.tar") as proxy:
        sink = S3Sink(f"s3://{bucket}/mp", S3Settings(endpoint_url=proxy.endpoint, retry_budget_s=3, **settings))
        t0 = time.monotonic()
        with pytest.raises(StorageUnavailable) as e:
            sink.write("shards/000001.tar", data)
    assert time.monotonic() - t0 < 30  # retried for storage.retry_budget_s, then given up
    assert "SlowDown" in str(e.value) and "storage.retry_budget_s" in str(e.value)
    assert not direct.exists("shards/000001.tar")
    assert direct.incomplete_uploads() == []  # the upload was aborted, not left open
    assert direct.list() == ["shards/000000.tar"]


# -- disk full --------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_disk_full_on_a_local_sink(ray_cluster, tmp_path, capsys, monkeypatch):
    """A real small tmpfs (root); elsewhere the same run with every file write past a quota failing with
    ENOSPC inside LocalSink. Either way: a clear error naming the output and the fix, no committed shard
    half-written."""
    disk = tmp_path / "disk"
    real = _mount_tmpfs(disk, "800k")  # run.json and two 320 KB shards fit, the rest does not
    out = disk / "out"
    args = ["generate", *BASE, *plan(6), f"output.uri={out}", "ray.num_workers=1"]
    try:
        if not real:  # not root: fill the quota inside this process's sink, run the workers in-process
            _disk_full_in_process(tmp_path, monkeypatch)
            return
        with pytest.raises(SystemExit) as e:
            argen(args)
        err = capsys.readouterr().err
        assert e.value.code == 2
        assert f"output.uri='{out}' is full (No space left on device)" in err
        assert "nothing half-written was kept" in err and "run the same command again" in err
        assert "Traceback" not in err
        verdict = verify_output(LocalSink(out))
        committed = verdict.committed_shards
        assert 1 <= committed < 3
        # what is wrong is only what is missing: no committed shard is damaged (resuming once there is
        # space again is the driver-restart test's resume)
        assert all("not committed" in p or p.startswith("manifest.parquet") for p in verdict.problems), verdict
    finally:
        if real:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _disk_full_in_process(tmp_path: Path, monkeypatch) -> None:
    from pipeline import sinks
    from pipeline.plan import ShardTask, sample_seed
    from pipeline.worker import ShardWorker, WorkerSpec

    quota = [700_000]
    real_fdopen = os.fdopen

    class Quota:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if len(data) > quota[0]:
                raise OSError(errno.ENOSPC, "No space left on device")
            quota[0] -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(sinks.os, "fdopen", lambda fd, mode: Quota(real_fdopen(fd, mode)))
    out = tmp_path / "quota"
    sink = LocalSink(out)
    worker = ShardWorker(WorkerSpec(worker="w0", model="var_tiny", accel="none", device="cpu", batch_size=2,
                                    sink=sink, random_init=True))
    written = 0
    with pytest.raises(sinks.ArgenError, match="is full .*nothing half-written was kept"):
        for s in range(6):
            worker.run_shard(ShardTask(shard=s, start=2 * s, conditions=(1, 2),
                                       seeds=(sample_seed(0, 2 * s), sample_seed(0, 2 * s + 1))))
            written += 1
    worker.close()
    assert 1 <= written < 6
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(
        [f"{s:06d}.tar" for s in range(written)] + [f"{s:06d}.stats.json" for s in range(written)])


# -- damaged committed shards -------------------------------------------------------------------

def test_damaged_committed_shards_are_repaired_on_resume(ray_cluster, tmp_path, capsys):
    """A truncated tar and a deleted one are found by the size check on resume, a tar with flipped bytes by
    output.check=sha256; each is regenerated with the same bytes and the run ends complete, verify OK."""
    out = tmp_path / "out"
    args = ["generate", *BASE, *plan(8), f"output.uri={out}", "ray.num_workers=1"]
    argen(args)
    tars = {s: (out / "shards" / f"{s:06d}.tar").read_bytes() for s in range(4)}
    (out / "shards" / "000001.tar").write_bytes(tars[1][:len(tars[1]) // 2])  # truncated
    flipped = bytearray(tars[2])
    flipped[1000:1016] = bytes(b ^ 0xFF for b in flipped[1000:1016])
    (out / "shards" / "000002.tar").write_bytes(bytes(flipped))             # same size, other bytes
    (out / "shards" / "000003.tar").unlink()                                # gone
    capsys.readouterr()

    argen(args)  # output.check=size: the truncated and the missing tar
    said = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert [r["shard"] for r in report["repaired_shards"]] == [1, 3], report["repaired_shards"]
    assert "its tar is missing" in said.out + said.err and report["generated_shards"] == 2
    assert not verify_output(LocalSink(out)).ok  # the flipped bytes pass a size check (its documented limit)

    argen([*args, "output.check=sha256"])
    report = json.loads((out / "report.json").read_text())
    assert [r["shard"] for r in report["repaired_shards"]] == [2] and "sha256" in report["repaired_shards"][0]["problem"]
    assert report["complete"] is True and report["generated_shards"] == 1
    assert_complete(LocalSink(out), 4, 8)
    assert {s: (out / "shards" / f"{s:06d}.tar").read_bytes() for s in range(4)} == tars
    assert (out / "contact_sheet.png").exists() and (out / "report.html").exists()
