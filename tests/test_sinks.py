"""LocalSink and S3Sink (real HTTP to a moto server on 127.0.0.1)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import boto3
import pytest

from accel.api import ArgenError
from pipeline.redaction import redact_url
from pipeline.sinks import LocalSink, S3Settings, S3Sink, open_sink


def test_local_sink_roundtrip(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    assert isinstance(sink, LocalSink)
    sink.preflight()
    assert sink.list() == []  # the probe is gone
    sink.write("shards/000001.tar", b"abc")
    sink.write("run.json", b"{}")
    sink.write("shards/000001.tar", b"abcd")  # overwrite is a whole-object replace
    assert sink.read("shards/000001.tar") == b"abcd"
    assert sink.list() == ["run.json", "shards/000001.tar"]
    assert sink.list("shards/") == ["shards/000001.tar"]
    assert sink.exists("run.json") and not sink.exists("nope")
    # no temporary files are left behind; a dead writer's are cleaned up
    assert sorted(os.listdir(tmp_path / "out" / "shards")) == ["000001.tar"]
    (tmp_path / "out" / "shards" / ".000002.tar.x1y2.tmp").write_bytes(b"half")
    assert sink.list() == ["run.json", "shards/000001.tar"]
    (tmp_path / "out" / ".manifest.parquet.k3j2.tmp").write_bytes(b"half")
    (tmp_path / "out" / ".notes.txt.a1b2.tmp").write_bytes(b"someone else's")  # not the run's: kept
    assert sink.clean_incomplete() == 2
    assert sorted(os.listdir(tmp_path / "out" / "shards")) == ["000001.tar"]
    assert (tmp_path / "out" / ".notes.txt.a1b2.tmp").exists() and sink.incomplete_writes() == []
    sink.delete("run.json")
    sink.delete("run.json")
    assert not sink.exists("run.json")
    assert isinstance(open_sink(f"file://{tmp_path}/o2"), LocalSink)


def test_file_uris_are_read_as_rfc_8089_everywhere(tmp_path):
    """file:///abs and file://localhost/abs are the folder /abs; file://out/run names a host "out" and is
    refused (it once became /run for output.uri and the relative out/run for checkpoints)."""
    from accel.checkpoints import local_path, read_checkpoint

    tmp_path = tmp_path.resolve()
    assert open_sink(f"file://{tmp_path}/o2").root == tmp_path / "o2"
    assert open_sink(f"file://localhost{tmp_path}/o%203").root == tmp_path / "o 3"
    assert open_sink(f"file:{tmp_path}/o4").root == tmp_path / "o4"
    assert local_path("~/x") == Path.home() / "x" and local_path("rel/x") == Path("rel/x")
    with pytest.raises(ArgenError, match=r"output.uri='file://out/run' is not an absolute file URI.*names a host"):
        open_sink("file://out/run")
    with pytest.raises(ArgenError, match=r"checkpoint='file://weights/a.pt' is not an absolute file URI"):
        read_checkpoint("file://weights/a.pt")
    assert local_path(f"FILE://LocalHost{tmp_path}/x") == tmp_path / "x"
    for uri, why in ((f"file://{tmp_path}/run#3", "a query or fragment"), (f"file://{tmp_path}/x?y=1", "a query"),
                     ("file:rel/x", "not absolute")):
        with pytest.raises(ArgenError, match=rf"output.uri='{re.escape(uri)}' .*{why}"):
            open_sink(uri)


def test_local_sink_rejects(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArgenError, match="is a file, not a folder"):
        LocalSink(tmp_path / "f").preflight()
    with pytest.raises(ArgenError, match="scheme 'gs'"):
        open_sink("gs://bucket/x")
    with pytest.raises(ArgenError, match="output.uri is empty"):
        open_sink("")
    with pytest.raises(ValueError, match="bad object key"):
        LocalSink(tmp_path).write("../escape", b"")


def test_settings():
    assert S3Settings(endpoint_url="http://x").checksum_mode() == "when_required"
    assert S3Settings().checksum_mode() == "when_supported"
    assert S3Settings(checksum="when_supported", endpoint_url="http://x").checksum_mode() == "when_supported"
    with pytest.raises(ArgenError, match="storage.checksum='sometimes'"):
        S3Settings.from_config({"checksum": "sometimes"})
    assert redact_url("http://user:pw@host:9000/x") == "http://host:9000/x"


def sink_for(endpoint, bucket, prefix="run/a", **kw):
    return S3Sink(f"s3://{bucket}/{prefix}", S3Settings(endpoint_url=endpoint, region="us-east-1", **kw))


@pytest.mark.slow
def test_s3_sink_roundtrip_and_multipart(s3_bucket):
    endpoint, bucket = s3_bucket
    sink = sink_for(endpoint, bucket, multipart_threshold_mb=5, multipart_chunksize_mb=5)
    sink.preflight()
    assert sink.list() == []
    small, big = b"x" * 100, os.urandom(11 * 1024 * 1024)  # big: 3 parts
    sink.write("shards/000000.tar", big)
    sink.write("run.json", small)
    assert sink.read("shards/000000.tar") == big
    assert sink.list() == ["run.json", "shards/000000.tar"]
    assert sink.list("shards/") == ["shards/000000.tar"]
    assert sink.exists("run.json") and not sink.exists("shards/000001.tar")
    head = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=bucket, Key="run/a/shards/000000.tar")
    assert head["ETag"].strip('"').endswith("-3")  # it really was a multipart upload
    assert sink.incomplete_uploads() == []
    sink.delete("run.json")
    assert sink.list() == ["shards/000000.tar"]


@pytest.mark.slow
def test_s3_multipart_failure_aborts(s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    sink = sink_for(endpoint, bucket, multipart_threshold_mb=5, multipart_chunksize_mb=5, max_concurrency=1)
    client = sink.client
    real = client.upload_part
    calls = []

    def flaky(**kw):
        calls.append(kw["PartNumber"])
        if kw["PartNumber"] == 2:
            raise ConnectionError("network dropped (test)")
        return real(**kw)

    monkeypatch.setattr(client, "upload_part", flaky)
    with pytest.raises(ConnectionError):
        sink.write("shards/000000.tar", b"y" * (11 * 1024 * 1024))
    assert 2 in calls
    assert not sink.exists("shards/000000.tar")  # nothing half-written is visible
    assert sink.incomplete_uploads() == []       # and the upload was aborted
    # an upload abandoned by a process that died is aborted by the next run's clean-up
    client.create_multipart_upload(Bucket=bucket, Key="run/a/shards/000003.tar")
    assert sink.incomplete_uploads() == ["run/a/shards/000003.tar"]
    assert sink.clean_incomplete() == 1 and sink.incomplete_uploads() == []
    # other uploads, under the prefix or beside it, are not the run's to abort
    client.create_multipart_upload(Bucket=bucket, Key="run/a/backup/big.bin")
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/shards/000003.tar")
    assert sink.incomplete_writes() == [] and sink.clean_incomplete() == 0
    assert sink.incomplete_uploads() == ["run/a/backup/big.bin"]


@pytest.mark.slow
def test_s3_preflight_errors(s3_bucket, monkeypatch):
    endpoint, bucket = s3_bucket
    with pytest.raises(ArgenError, match="bucket 'argen-no-such-bucket' does not exist"):
        sink_for(endpoint, "argen-no-such-bucket").preflight()
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ArgenError, match="no S3 credentials") as e:
        sink_for(endpoint, bucket).preflight()
    assert "argen-test-secret" not in str(e.value)


def test_s3_sink_pickles_without_client():
    import pickle

    sink = S3Sink("s3://bucket-x/p/", S3Settings(endpoint_url="http://127.0.0.1:1"))
    assert sink.uri == "s3://bucket-x/p"
    clone = pickle.loads(pickle.dumps(sink))
    assert clone._client is None and clone.bucket == "bucket-x" and clone.prefix == "p"


def test_s3_client_settings(aws_env):
    """Standard retries, path-style and checksums only when required for a custom endpoint; AWS defaults otherwise."""
    custom = S3Sink("s3://bucket-x/p", S3Settings(endpoint_url="http://127.0.0.1:1", max_attempts=4)).client.meta.config
    assert custom.retries == {"mode": "standard", "total_max_attempts": 4}  # first try included
    assert custom.request_checksum_calculation == "when_required"
    assert custom.response_checksum_validation == "when_required"
    assert custom.s3["addressing_style"] == "path"
    aws = S3Sink("s3://bucket-x/p", S3Settings(region="us-east-1")).client.meta.config
    assert aws.request_checksum_calculation == "when_supported" and aws.s3["addressing_style"] == "virtual"
    forced = S3Sink("s3://b-x/p", S3Settings(endpoint_url="http://h:1", checksum="when_supported")).client.meta.config
    assert forced.request_checksum_calculation == "when_supported"


def test_checkpoint_messages_name_the_setting(s3_bucket, tmp_path, monkeypatch):
    """A missing local or s3:// checkpoint names the load_generator() argument and its argen generate key;
    botocore's error (which names neither) is wrapped."""
    from accel import checkpoints
    from accel.api import load_generator

    endpoint, bucket = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(ArgenError, match=rf"tokenizer_checkpoint \(model.tokenizer_checkpoint in argen generate\)="
                                         rf"'s3://{bucket}/nope.pt' could not be downloaded \(ClientError"):
        checkpoints.read_checkpoint(f"s3://{bucket}/nope.pt", "tokenizer_checkpoint")
    missing = str(tmp_path / "none.pth")
    with pytest.raises(ArgenError, match=r"^checkpoint \(model.checkpoint in argen generate\)='.*none.pth': the file"):
        load_generator("var_tiny", device="cpu", checkpoint=missing, tokenizer_checkpoint=missing)
    with pytest.raises(ArgenError, match=r"eval.inception_weights='.*none.pth': the file .* does not exist"):
        checkpoints.read_checkpoint(missing, "eval.inception_weights")
    with pytest.raises(ArgenError, match=r"^tokenizer_checkpoint \(model.tokenizer_checkpoint in argen generate\)="):
        load_generator("mar_toy", device="cpu", tokenizer_checkpoint=str(tmp_path / "kl.safetensors"))  # metadata read
