"""`argen verify`: a real run's output (the pipeline's own stages with the real var_tiny, the shard worker
in this process instead of a Ray actor) passes; each kind of damage is found and named; exit codes.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main as argen
from jobs.submit import compose
from jobs.verify import verify_output
from pipeline.driver import prepare, worker_spec, write_outputs
from pipeline.sinks import LocalSink, S3Settings, S3Sink
from pipeline.worker import ShardWorker

OVERRIDES = ["model=var_tiny", "device=cpu", "data.classes=[3,7,11]", "data.per_class=2", "output.shard_size=2",
             "batch_size=2", "progress=false"]


def make_run(uri: str) -> None:
    cfg = compose("generate", [*OVERRIDES, f"output.uri={uri}"])
    job = prepare(cfg)  # checks, plan, preflight, run.json
    worker = ShardWorker(replace(worker_spec(cfg, job.sink, 0), torch_threads=None))  # leave this process's threads
    try:
        records = [worker.run_shard(job.plan.shard(s)) for s in range(job.plan.num_shards)]
    finally:
        worker.close()
    write_outputs(job.sink, records, records, 1.0, job.plan, {})


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify") / "run"
    make_run(str(root))
    return root


@pytest.fixture()
def run_copy(clean_run, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(clean_run, dest)
    return dest


def problems(root: Path) -> list[str]:
    return verify_output(LocalSink(root)).problems


def rewrite_tar(root: Path, shard: int, edit) -> None:
    """Rebuild shard's tar with edit(members) applied, and make its stats/manifest match the new bytes."""
    path = root / f"shards/{shard:06d}.tar"
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = edit(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data)
    stats_path = root / f"shards/{shard:06d}.stats.json"
    stats = json.loads(stats_path.read_text())
    stats.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    stats_path.write_text(json.dumps(stats))
    table = pq.read_table(root / "manifest.parquet")
    rows = table.to_pylist()
    for r in rows:
        if r["shard"] == shard:
            r.update(sha256=stats["sha256"], bytes=stats["bytes"])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), root / "manifest.parquet")


def test_a_clean_run_passes_and_the_cli_exits_0(clean_run, capsys):
    v = verify_output(LocalSink(clean_run))
    assert v.ok and v.planned_shards == v.committed_shards == 3 and v.images == 6 and v.notes == []
    with pytest.raises(SystemExit) as e:
        argen(["verify", f"output.uri={clean_run}"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "3 of 3 planned shards committed, 6 images" in out and ": OK" in out


def test_damaged_bytes_in_a_png(run_copy, capsys):
    path = run_copy / "shards/000001.tar"
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        png = next(m for m in tar.getmembers() if m.name == "000001_000000.png")
    data[png.offset_data + png.size // 2] ^= 0x55  # inside the image data: the tar still parses
    path.write_bytes(data)
    found = problems(run_copy)
    assert any("shard 000001: shards/000001.tar sha256" in p and "stats say" in p for p in found), found
    assert any("sample 000001_000000: unreadable PNG" in p for p in found), found
    with pytest.raises(SystemExit) as e:
        argen(["verify", f"output.uri={run_copy}"])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "problem(s):" in out and "unreadable PNG" in out


def test_missing_and_inconsistent_commits(run_copy):
    (run_copy / "shards/000000.stats.json").unlink()  # a tar without stats: not committed
    (run_copy / "shards/000002.tar").unlink()         # stats without a tar
    stats = json.loads((run_copy / "shards/000001.stats.json").read_text())
    stats["count"] = 5
    (run_copy / "shards/000001.stats.json").write_text(json.dumps(stats))
    found = problems(run_copy)
    assert any(p.startswith("shard 000000: not committed") and "a tar without stats" in p for p in found), found
    assert any("shard 000001: shards/000001.stats.json says shard 1 with 5 samples, expected shard 1 with 2" in p
               for p in found), found
    assert any("shard 000002: committed but shards/000002.tar is missing" in p for p in found), found
    assert any("manifest.parquet lists shard 0, which is not committed" in p for p in found), found


def test_truncated_tar(run_copy):
    path = run_copy / "shards/000002.tar"
    path.write_bytes(path.read_bytes()[:5000])
    found = problems(run_copy)
    assert any("shards/000002.tar has 5000 bytes" in p for p in found), found
    assert any("shard 000002: shards/000002.tar: " in p and ("unreadable" in p or "samples, expected 2" in p)
               for p in found), found


def test_tar_contents_checked_against_the_plan_even_when_hashes_match(run_copy):
    def add_member(members):
        info = tarfile.TarInfo("../escape.txt")
        return members + [(info, b"user text")]

    def change_seed(members):
        out = []
        for m, data in members:
            if m.name == "000000_000001.json":
                meta = json.loads(data)
                meta["seed"] += 1
                data = json.dumps(meta).encode()
            out.append((m, data))
        return out

    def drop_sample(members):
        return [(m, d) for m, d in members if not m.name.startswith("000002_000001.")]

    rewrite_tar(run_copy, 1, add_member)
    rewrite_tar(run_copy, 0, change_seed)
    rewrite_tar(run_copy, 2, drop_sample)
    found = problems(run_copy)
    assert not any("sha256" in p for p in found), found  # stats and manifest were made to match
    assert any("shard 000001: shards/000001.tar: unexpected tar member '../escape.txt'" in p for p in found), found
    assert any("sample 000000_000001: seed=" in p and "the plan says" in p for p in found), found
    assert any("tar holds 1 samples, expected 2 (missing 000002_000001)" in p for p in found), found


def test_manifest_checked_against_the_stats(run_copy):
    table = pq.read_table(run_copy / "manifest.parquet")
    rows = table.to_pylist()
    rows[1]["sha256"] = "0" * 64
    pq.write_table(pa.Table.from_pylist(rows[:2] + [rows[1]], schema=table.schema), run_copy / "manifest.parquet")
    found = problems(run_copy)
    assert "manifest.parquet lists shard 1 twice" in found
    assert any(p.startswith("manifest.parquet shard 1: sha256='000") for p in found), found
    assert any(p.startswith("manifest.parquet lacks 1 committed shard(s) (2)") for p in found), found
    (run_copy / "manifest.parquet").unlink()
    assert problems(run_copy) == ["manifest.parquet is missing; run argen generate again to write it"]


def test_leftover_temp_file_is_a_note_and_bad_input_exits_2(run_copy, tmp_path, capsys):
    (run_copy / "shards/.000001.tar.x1y2.tmp").write_bytes(b"half")
    v = verify_output(LocalSink(run_copy))
    assert v.ok and v.notes and "incomplete write shards/.000001.tar.x1y2.tmp" in v.notes[0]
    with pytest.raises(SystemExit) as e:
        argen(["verify", f"output.uri={tmp_path / 'nothing-here'}"])
    assert e.value.code == 2 and "has no run.json; pass the output.uri of an argen generate run" in \
        capsys.readouterr().err


@pytest.mark.slow
def test_s3_output(clean_run, s3_bucket, capsys):
    endpoint, bucket = s3_bucket
    uri = f"s3://{bucket}/v"
    storage = ["storage=s3_compatible", f"storage.endpoint_url={endpoint}"]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for path in clean_run.rglob("*"):  # the same run, in a bucket
        if path.is_file():
            client.upload_file(str(path), bucket, f"v/{path.relative_to(clean_run).as_posix()}")
    with pytest.raises(SystemExit) as e:
        argen(["verify", f"output.uri={uri}", *storage])
    assert e.value.code == 0 and "3 of 3 planned shards committed" in capsys.readouterr().out
    sink = S3Sink(uri, S3Settings(endpoint_url=endpoint, region="us-east-1"))
    sink.client.create_multipart_upload(Bucket=bucket, Key="v/shards/000009.tar")  # a writer that died
    sink.delete("shards/000001.stats.json")
    with pytest.raises(SystemExit) as e:
        argen(["verify", f"output.uri={uri}", *storage])
    out = capsys.readouterr().out
    assert e.value.code == 1 and "shard 000001: not committed" in out
    assert "note: incomplete write v/shards/000009.tar" in out


def test_a_resumed_generate_drops_an_evaluation_of_fewer_samples(run_copy):
    """report.json keeps what `argen evaluate` wrote while the run is unchanged, and drops it once a generate
    commits more shards (its FID was of the samples committed then)."""
    sink = LocalSink(run_copy)
    job = prepare(compose("generate", [*OVERRIDES, f"output.uri={run_copy}"]))
    records = [json.loads(sink.read(f"shards/{s:06d}.stats.json")) for s in range(job.plan.num_shards)]
    report = json.loads(sink.read("report.json"))
    sink.write("report.json", json.dumps({**report, "fid": 12.5, "precision": 0.5, "eval": {"samples": 4}}).encode())
    assert write_outputs(sink, records, [], 1.0, job.plan, {})["fid"] == 12.5  # nothing new: still the run's
    after = write_outputs(sink, records, records[-1:], 1.0, job.plan, {})
    assert not {"fid", "precision", "eval"} & set(after)
    assert not {"fid", "precision", "eval"} & set(json.loads(sink.read("report.json")))


@pytest.mark.heavy
def test_the_exit_status_is_reliable_over_100_runs(clean_run):
    """The installed command, 100 times on a good output: always 0 (no abort at interpreter shutdown)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    command = [str(Path(sys.executable).parent / "argen"), "verify", f"output.uri={clean_run}"]

    def once(_: int) -> tuple[int, str]:
        r = subprocess.run(command, capture_output=True, text=True, timeout=300)
        return r.returncode, r.stdout[-300:] + r.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(once, range(100)))
    bad = [(code, said) for code, said in results if code != 0]
    assert bad == [], f"{len(bad)} of 100 runs exited non-zero, first: {bad[0]}"
    assert all(": OK" in said for _, said in results)
