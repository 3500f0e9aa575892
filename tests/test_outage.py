"""Storage outages, end to end: a local TCP proxy in front of the S3 server is cut and restored while a run
writes through it. The run rides it out (storage retries with backoff within storage.retry_budget_s, then
shard retries with backoff), and no credential of the endpoint URL or the environment reaches any output
object, the console or the Ray logs.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest

from jobs.cli import main as argen
from jobs.verify import verify_output
from pipeline.sinks import S3Settings, S3Sink, StorageUnavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def ray_logs_since(since: float) -> dict[str, bytes]:
    from ray._private import worker

    logs = Path(worker._global_node.get_session_dir_path()) / "logs"
    return {str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file() and p.stat().st_mtime >= since}


def cut_after_first_commit(client, bucket: str, prefix: str, proxy, seconds: float) -> threading.Thread:
    """Watch the store directly (not through the proxy); when the first shard is committed, cut the proxy
    for `seconds`, then restore it."""
    def outage() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
            if any(k.endswith(".stats.json") for k in keys):
                break
            time.sleep(0.05)
        proxy.down()
        time.sleep(seconds)
        proxy.up()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("budget,attempts", [(60, 3), pytest.param(1, 20, marks=pytest.mark.heavy)],
                         ids=["storage-retries", "shard-retries"])
def test_a_run_rides_out_an_outage_and_no_secret_leaks(ray_cluster, s3_bucket, aws_env, tcp_proxy, capfd,
                                                       budget, attempts):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = tcp_proxy((host, int(port)))
    password = f"PW-{uuid.uuid4().hex}"
    secret_env = aws_env["AWS_SECRET_ACCESS_KEY"]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    since = time.time() - 1
    outage = cut_after_first_commit(client, bucket, "run/shards/", proxy, seconds=6)
    t0 = time.monotonic()
    argen(["generate", "model=var_toy", "device=cpu", "data.per_class=2", "output.shard_size=2", "batch_size=2",
           "progress=false", "ray.num_workers=1", f"output.uri=s3://{bucket}/run", "storage=s3_compatible",
           f"storage.endpoint_url=http://argen:{password}@127.0.0.1:{proxy.port}",
           f"storage.retry_budget_s={budget}", f"ray.max_attempts={attempts}"])
    outage.join(timeout=60)
    seconds = time.monotonic() - t0
    captured = capfd.readouterr()

    sink = S3Sink(f"s3://{bucket}/run", S3Settings(endpoint_url=endpoint, region="us-east-1"))
    verdict = verify_output(sink)
    assert verdict.ok and verdict.committed_shards == 10, verdict.problems
    report = json.loads(sink.read("report.json"))
    assert report["complete"] is True and seconds > 6
    logs = ray_logs_since(since)
    said = captured.out + captured.err + "".join(b.decode("utf-8", "replace") for b in logs.values())
    if budget == 1:  # shards failed while the store was down, were retried after a pause, and are recorded
        assert report["retries"] and all("shard" in r for r in report["retries"]), report["retries"]
        assert "retrying in" in captured.out + captured.err
    else:  # the storage retries covered the outage: no shard failed
        assert report["retries"] == [], report["retries"]
        assert "storage.retry_budget_s" in said  # the workers said they were waiting for the store

    blobs = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
             for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    blobs["console"] = (captured.out + captured.err).encode()
    blobs.update(logs)
    for what, secret in {"endpoint password": password, "secret key": secret_env}.items():
        leaks = [where for where, data in blobs.items() if secret.encode() in data]
        assert leaks == [], f"the {what} is in {leaks}"


def test_storage_retries_end_at_the_budget_and_refusals_pass_at_once(s3_bucket, tcp_proxy):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = tcp_proxy((host, int(port)))
    sink = S3Sink(f"s3://{bucket}/b", S3Settings(endpoint_url=proxy.url, region="us-east-1", retry_budget_s=3))
    sink.write("a", b"1")
    proxy.down()
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"writing b at .* did not answer for 3 s \(storage.retry_budget_s\)"):
        sink.write("b", b"2")
    assert 3 <= time.monotonic() - t0 < 10
    proxy.up()
    assert sink.read("a") == b"1"
    missing = S3Sink(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/b",
                     S3Settings(endpoint_url=proxy.url, region="us-east-1", retry_budget_s=30))
    t0 = time.monotonic()
    with pytest.raises(Exception, match="NoSuchBucket"):  # not transient: no retries
        missing.write("a", b"1")
    assert time.monotonic() - t0 < 3


@pytest.mark.heavy  # ~26 s: the quick client's own timeouts, by design
def test_preflight_fails_fast_on_an_endpoint_that_never_answers(tcp_proxy, tmp_path, capsys):
    silent = tcp_proxy(None, silent=True)
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as e:
        argen(["generate", "model=var_toy", "progress=false", "output.uri=s3://some-bucket/run",
               "storage=s3_compatible", f"storage.endpoint_url={silent.url}"])
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert e.value.code == 2 and seconds < 35, (seconds, err)
    assert f"cannot reach S3 for output.uri: a test write at s3://some-bucket/run at {silent.url}" in err


@pytest.mark.heavy
def test_a_write_rides_out_a_60_s_outage(s3_bucket, tcp_proxy):
    endpoint, bucket = s3_bucket
    host, port = endpoint.removeprefix("http://").split(":")
    proxy = tcp_proxy((host, int(port)))
    sink = S3Sink(f"s3://{bucket}/long", S3Settings(endpoint_url=proxy.url, region="us-east-1"))  # defaults
    proxy.down()
    timer = threading.Timer(60, proxy.up)
    timer.start()
    t0 = time.monotonic()
    sink.write("shards/000000.tar", b"x" * 1000)
    assert time.monotonic() - t0 >= 59
    assert sink.read("shards/000000.tar") == b"x" * 1000
