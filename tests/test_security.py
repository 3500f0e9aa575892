"""Security, end to end: planted secrets never reach outputs or logs; user text (prompts) never reaches an
object key or a tar member name; a checkpoint that carries code is refused without running it.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
import time
import uuid
from pathlib import Path

import boto3
import pytest
import torch

from jobs.cli import main as argen
from jobs.verify import verify_output
from pipeline.sinks import S3Settings, S3Sink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = re.compile(r"^(run\.json|manifest\.parquet|report\.json|report\.html|contact_sheet\.png|shards/\d{6}\.(tar|stats\.json|features\.npy|logits\.npy))$")
MEMBER = re.compile(r"^\d{6}_\d{6}\.(png|json|txt|cls)$")
PROMPTS = [
    "../../../../tmp/argen-escape",
    "shards/000000.stats.json",
    "a/b\\c.png with.dots.in.it",
    "$(touch /tmp/argen-pwned) `id` ${oc.env:HOME}",
    "ünïcødé prompt 🐱 — with punctuation!?",
    "x" * 300,
]


def ray_log_files(ray_cluster, since: float) -> list[Path]:
    from ray._private import worker

    logs = Path(worker._global_node.get_session_dir_path()) / "logs"
    return [p for p in logs.rglob("*") if p.is_file() and p.stat().st_mtime >= since]


def test_secrets_stay_out_and_user_text_stays_in_payloads(ray_cluster, s3_bucket, aws_env, tmp_path, capfd,
                                                          monkeypatch):
    from accel.text_encoder import write_random_t5

    endpoint, bucket = s3_bucket
    planted = {
        "password": f"planted-password-{uuid.uuid4().hex}",
        "session": f"planted-session-token-{uuid.uuid4().hex}",
        "worker env": aws_env["AWS_SECRET_ACCESS_KEY"],  # the Ray workers' credentials
        "key id": aws_env["AWS_ACCESS_KEY_ID"],
    }
    monkeypatch.setenv("AWS_SESSION_TOKEN", planted["session"])  # the driver's credentials
    t5 = write_random_t5(tmp_path / "t5")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    since = time.time() - 1
    uri = f"s3://{bucket}/sec"
    argen(["generate", "model=llamagen_t2i_tiny", f"model.text_encoder={t5}", f"data.conditions_file={prompts}",
           "device=cpu", "batch_size=3", "output.shard_size=3", "progress=false", "ray.num_workers=1",
           f"output.uri={uri}", "storage=s3_compatible",
           f"storage.endpoint_url={endpoint.replace('http://', 'http://argen:' + planted['password'] + '@')}"])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    sink = S3Sink(uri, S3Settings(endpoint_url=endpoint, region="us-east-1"))
    verdict = verify_output(sink)
    assert verdict.ok and verdict.committed_shards == 2 and verdict.images == len(PROMPTS), verdict.problems
    captured = capfd.readouterr()

    # 1. object keys: only argen's own names, nothing derived from the prompts
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="sec/")["Contents"]]
    assert keys and all(KEY.match(k[len("sec/"):]) for k in keys), keys
    # tar members: `{shard}_{index}.{ext}`; the prompts come back exactly, as payloads
    texts = []
    for s in range(2):
        data = sink.read(f"shards/{s:06d}.tar")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
            assert all(MEMBER.match(n) for n in names), names
            texts += [tar.extractfile(n).read().decode("utf-8") for n in names if n.endswith(".txt")]
    assert texts == PROMPTS
    assert not Path("/tmp/argen-pwned").exists() and not Path("/tmp/argen-escape").exists()

    # 2. no planted secret in any object (run.json, manifest, report, stats, tars), the driver's output,
    # or the Ray logs written during the run (workers' stdout/stderr included)
    blobs = {k: sink.read(k[len("sec/"):]) for k in keys}
    blobs["stdout+stderr"] = (captured.out + captured.err).encode()
    assert "Found credentials" not in captured.out + captured.err  # botocore's INFO lines stay off the console
    logs = ray_log_files(ray_cluster, since)
    assert logs, "no Ray log file written during the run"
    blobs.update({str(p): p.read_bytes() for p in logs})
    for what, secret in planted.items():
        leaks = [where for where, data in blobs.items() if secret.encode() in data]
        assert leaks == [], f"the {what} secret is in {leaks}"
    run = json.loads(sink.read("run.json"))
    assert run["config"]["storage"]["endpoint_url"] == endpoint  # without its user:password@
    assert run["config"]["data"]["conditions_file"] == str(prompts)  # the rest of the config is all there

    # a secret passed as a config key is refused as an unknown key, and not echoed
    with pytest.raises(SystemExit) as e:
        argen(["generate", f"output.uri={uri}", f"+storage.aws_secret_access_key={planted['session']}"])
    err = capfd.readouterr().err
    assert e.value.code == 2 and "unknown config key(s): storage.aws_secret_access_key" in err
    assert planted["session"] not in err


class CodeInPickle:
    """A 'checkpoint' whose unpickling runs a command (what a malicious .pth file does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_code_is_refused_without_running_it(ray_cluster, s3_bucket, tmp_path, capsys,
                                                                 monkeypatch):
    from accel import checkpoints

    marker = tmp_path / "code-ran"
    evil = tmp_path / "var_tiny.pth"
    torch.save({"model": CodeInPickle(marker), "note": "weights"}, evil)
    pickle.loads(pickle.dumps(CodeInPickle(marker)))  # control: plain unpickling really runs the payload
    assert marker.exists()
    marker.unlink()

    # end to end: the workers load model.checkpoint / model.tokenizer_checkpoint from an untrusted path
    with pytest.raises(SystemExit) as e:
        argen(["generate", "model=var_tiny", "model.random_init=false", f"model.checkpoint={evil}",
               f"model.tokenizer_checkpoint={evil}", "device=cpu", "progress=false", "ray.num_workers=1",
               f"output.uri={tmp_path / 'out'}", "data.per_class=1", "data.classes=[1]"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert f"could not read '{evil}' as a weights-only torch checkpoint" in err
    assert "argen never unpickles arbitrary objects" in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "shards").exists() or not any((tmp_path / "out" / "shards").iterdir())

    # the same file from s3:// (downloaded to the cache, then read weights-only)
    endpoint, bucket = s3_bucket
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").upload_file(str(evil), bucket, "ckpt/evil.pth")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setattr(checkpoints, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(checkpoints.ArgenError, match="never unpickles arbitrary objects"):
        checkpoints.read_checkpoint(f"s3://{bucket}/ckpt/evil.pth")
    assert not marker.exists()
    # a weights-only file from the same place loads
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.ones(2)}}, good)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").upload_file(str(good), bucket, "ckpt/good.pth")
    assert torch.equal(checkpoints.read_checkpoint(f"s3://{bucket}/ckpt/good.pth")["model"]["w"], torch.ones(2))
