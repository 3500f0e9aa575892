"""`argen submit`: argument checks (no cluster), then a real local Ray head with token auth.

The head is `ray start --head --block` on 127.0.0.1 with free ports and its own --temp-dir (so neither
the session's Ray nor anybody else's `ray.init()` finds it), started in its own process group and
stopped by signalling exactly that group. The CLI runs as a subprocess, as a user runs it.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from accel.api import ArgenError
from jobs import submit
from jobs.verify import verify_output
from pipeline.sinks import LocalSink

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SMALL = ["model=var_tiny", "device=cpu", "data.classes=[5,9]", "data.per_class=1", "output.shard_size=1",
         "batch_size=1", "progress=false", "ray.num_workers=1"]


# -- no cluster -------------------------------------------------------------------------------

def run_submit(argv, capsys):
    code = submit.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    ([], "which job?"),
    (["bench"], "cannot submit 'bench'; submittable jobs: generate, evaluate, verify"),
    (["generate", "output.uri=/tmp/x"], "ray.address is not set; pass ray.address=http://HEAD:8265"),
    (["generate", "ray.address=auto", "output.uri=/tmp/x"], "ray.address='auto' (that is a Ray Client or GCS"),
    (["generate", "ray.address=ray://head:10001", "output.uri=/tmp/x"], "expected http://HEAD:8265"),
    (["generate", "ray.address=http://h:8265"], "output.uri='./argen_output' is a relative path"),
    (["generate", "ray.address=http://h:8265", "output.uri=/tmp/x", "no.such.key=1"], "bad override"),
    (["generate", "ray.address=http://h:8265", "output.uri=/tmp/x", "accel=fastvar", "accel.options.cache_scale=8"],
     "To append to your config use +accel.options.cache_scale=8"),  # Hydra's hint is kept
    (["generate", "ray.address=http://h:8265", "accel=turbo"], "Available options in 'accel': fastvar lantern"),
    (["generate", "ray.address=http://h:8265", "output.uri=/tmp/x", "ray.num_workers=0"], "ray.num_workers=0"),
    (["generate", "--detach"], "unknown option(s) ['--detach']"),
])
def test_bad_submissions_fail_before_contacting_a_cluster(argv, message, capsys):
    code, out, err = run_submit(argv, capsys)
    assert code == 2 and message in err and out == ""


def test_unreachable_jobs_api_is_named(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run_submit(["verify", f"ray.address=http://127.0.0.1:{port}", "output.uri=/tmp/x"], capsys)
    assert code == 2 and f"cannot reach the Ray Jobs API at ray.address=http://127.0.0.1:{port}" in err


def test_runtime_env_ships_the_project_and_no_secrets(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-runtime-env")
    env = submit.runtime_env()
    assert env["working_dir"] == str(REPO)
    for pattern in (".venv", ".git", "outputs", "argen_output", "*.egg-info"):
        assert pattern in env["excludes"]
    assert "planted-secret-runtime-env" not in json.dumps(env)
    assert set(env["env_vars"]) == {"RAY_USAGE_STATS_ENABLED", "PYTHONUNBUFFERED", "ARGEN_CODE_VERSION"}
    from pipeline.driver import code_version

    assert env["env_vars"]["ARGEN_CODE_VERSION"] == code_version()  # the shipped copy has no .git: the job
    code_version.cache_clear()                                         # takes the version it is given
    monkeypatch.setenv("ARGEN_CODE_VERSION", "9.9.9+gfeedbee")
    try:
        assert code_version() == "9.9.9+gfeedbee"
    finally:
        monkeypatch.delenv("ARGEN_CODE_VERSION")
        code_version.cache_clear()
    assert code_version() != "9.9.9+gfeedbee"
    # the patterns as Ray's packaging reads them (gitwildmatch): environments and outputs out, code in
    from ray._private.thirdparty.pathspec import PathSpec  # the copy Ray's packaging uses

    spec = PathSpec.from_lines("gitwildmatch", env["excludes"])
    for path in (".venv/bin/python", ".git/HEAD", "argen_output/shards/000000.tar", "argen.egg-info/PKG-INFO",
                 "pipeline/__pycache__/driver.cpython-311.pyc", "weights/var_d16.pth", "outputs/x/run.json"):
        assert spec.match_file(path), path
    for path in ("jobs/submit.py", "pipeline/driver.py", "accel/api.py", "jobs/conf/config.yaml", "pyproject.toml",
                 "accel/toy/weights/var_toy.safetensors"):  # the default model's committed weights travel too
        assert not spec.match_file(path), path
    for path in ("weights/mar_base.safetensors", "data/prompts.parquet"):
        assert spec.match_file(path), path


def test_a_conditions_file_in_the_checkout_travels_with_it(tmp_path, monkeypatch, capsys):
    """A conditions file inside the checkout is shipped (even a .parquet) and named relative to it, where the job
    runs; one elsewhere keeps its absolute path (a shared filesystem); a missing one fails before submitting."""
    from omegaconf import OmegaConf
    from ray._private.thirdparty.pathspec import PathSpec

    root = tmp_path / "checkout"
    for package in submit.PACKAGES:
        (root / package).mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "data").mkdir()
    (root / "data" / "prompts list.parquet").write_bytes(b"x")
    monkeypatch.chdir(root / "data")
    cfg = OmegaConf.create({"data": {"conditions_file": "prompts list.parquet"}})
    relative = submit.conditions_file_for_cluster(cfg, root)
    assert relative == "data/prompts list.parquet"
    env = submit.runtime_env(root, relative)
    assert not PathSpec.from_lines("gitwildmatch", env["excludes"]).match_file(relative)
    overrides = submit.job_overrides(["data.conditions_file=prompts list.parquet", "model=var_toy"], relative)
    assert overrides == ["model=var_toy", 'data.conditions_file="data/prompts list.parquet"', "ray.address=null"]
    from jobs.submit import compose

    assert compose("generate", overrides).data.conditions_file == "data/prompts list.parquet"

    elsewhere = tmp_path / "shared" / "classes.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_text("1\n")
    cfg = OmegaConf.create({"data": {"conditions_file": str(elsewhere)}})
    assert submit.conditions_file_for_cluster(cfg, root) == str(elsewhere)
    assert "every node of the cluster must see it" in capsys.readouterr().err
    (root / "outputs").mkdir()
    (root / "outputs" / "c.txt").write_text("1\n")
    with pytest.raises(ArgenError, match="in a folder argen submit does not ship"):
        submit.conditions_file_for_cluster(OmegaConf.create({"data": {"conditions_file": str(root / "outputs" / "c.txt")}}), root)
    with pytest.raises(ArgenError, match=r"data.conditions_file='nope.txt' is not a file here"):
        submit.conditions_file_for_cluster(OmegaConf.create({"data": {"conditions_file": "nope.txt"}}), root)
    assert submit.conditions_file_for_cluster(OmegaConf.create({"data": {"conditions_file": None}}), root) is None


def test_entrypoint_quotes_overrides_and_clears_the_address():
    overrides = ["ray.address=http://h:8265", "data.classes=[1, 2]", "output.uri=s3://b/it's here"]
    cmd = submit.entrypoint("generate", overrides, "argen-generate-x", "http://h:8265")
    argv = shlex.split(cmd)
    assert argv[:7] == ["python", "-m", "jobs.submit", "--in-job", "argen-generate-x", "http://h:8265", "generate"]
    assert argv[7:] == ["data.classes=[1, 2]", "output.uri=s3://b/it's here", "ray.address=null"]
    sid = submit.new_submission_id("generate")
    assert sid.startswith("argen-generate-") and all(c.isalnum() or c in "-" for c in sid)


def test_in_job_mode_saves_the_resolved_config_without_secrets(tmp_path, monkeypatch, capsys):
    """What the job does on the cluster, run here: the record next to the output, then the job itself."""
    out = tmp_path / "out"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-in-job")
    with pytest.raises(SystemExit) as e:
        submit.main(["--in-job", "argen-verify-test", "http://user:pw@h:8265", "verify", f"output.uri={out}",
                     "storage.endpoint_url=http://u:planted-secret-in-job@h:9000", "ray.address=null"])
    # verify of an empty folder: no run.json, bad input (exit 2); the record was written first
    assert e.value.code == 2 and "has no run.json" in capsys.readouterr().err
    record_path = out / "submits" / "argen-verify-test.json"
    text = record_path.read_text()
    assert "planted-secret-in-job" not in text and "pw@" not in text
    record = json.loads(text)
    assert record["job"] == "verify" and record["address"] == "http://h:8265"
    assert record["config"]["output"]["uri"] == str(out) and record["config"]["ray"]["address"] is None
    assert record["config"]["storage"]["endpoint_url"] == "http://h:9000"
    code = submit.main(["--in-job", "argen-verify-typo", "http://h:8265", "verify", f"output.uri={out}",
                        "+storage.aws_secret_access_key=planted-secret-in-job"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key(s): storage.aws_secret_access_key" in err
    assert "planted-secret-in-job" not in err and not (out / "submits" / "argen-verify-typo.json").exists()


# -- a real head --------------------------------------------------------------------------------

@dataclass
class Head:
    address: str
    env: dict[str, str]
    token: str
    proc: subprocess.Popen
    temp_dir: str
    gcs_address: str


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _api(head: Head, path: str, token: str | None) -> int:
    return _get(head, path, token)[0]


def _get(head: Head, path: str, token: str | None) -> tuple[int, bytes]:
    """The Jobs REST API, as any HTTP client sees it (with the token, or without)."""
    req = urllib.request.Request(head.address + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def stop_group(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """Stop exactly the process group this test started (SIGTERM, then SIGKILL)."""
    pgid = proc.pid  # start_new_session=True: the group's id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)  # whatever of the group is left (gcs_server, raylet, agents)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def group_alive(pgid: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
    return [line for line in ps if line.split()[1:2] == [str(pgid)] and not line.split()[2].startswith("Z")]


@pytest.fixture(scope="module")
def ray_head():
    names = ["port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port"]
    ports = dict(zip(names, _free_ports(len(names))))
    temp_dir = tempfile.mkdtemp(prefix="argen-rh-", dir="/tmp")  # short: Ray's socket paths must fit
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"] + [f"--{k}={v}" for k, v in ports.items()]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(address=f"http://127.0.0.1:{ports['dashboard-port']}", env=env, token=token, proc=proc,
                temp_dir=temp_dir, gcs_address=f"127.0.0.1:{ports['port']}")
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}: "
                                   f"{(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            try:
                if _api(head, "/api/jobs/", token) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Jobs API did not come up in 120 s")
            time.sleep(1)
        yield head
    finally:
        stop_group(proc)
        log.close()
        survivors = group_alive(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert survivors == [], "processes of the head's group survived"


def argen_cli(head: Head, *args: str, timeout: float = 400, token: bool = True) -> subprocess.CompletedProcess:
    env = dict(head.env)
    if not token:
        env.pop("RAY_AUTH_TOKEN")
        env.pop("RAY_AUTH_MODE")
    return subprocess.run([str(VENV_BIN / "argen"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submit_generate_then_verify_on_a_local_head(ray_head, tmp_path):
    head = ray_head
    assert _api(head, "/api/jobs/", None) in (401, 403)  # the head really requires its token

    refused = argen_cli(head, "submit", "verify", f"ray.address={head.address}", f"output.uri={tmp_path}",
                        token=False)
    assert refused.returncode == 2 and "requires a token" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr

    out = tmp_path / "run"
    done = argen_cli(head, "submit", "generate", f"ray.address={head.address}", f"output.uri={out}", *SMALL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[0]
    assert first.startswith("argen submit: submitted job argen-generate-") and head.address in first
    sid = first.split()[4]
    # the job's own logs came back (followed), and its end
    assert "argen generate: 2 shards, 2 images" in done.stdout and f"job {sid} SUCCEEDED" in done.stdout

    verdict = verify_output(LocalSink(out))
    assert verdict.ok and verdict.committed_shards == 2 and verdict.images == 2, verdict.problems
    record = json.loads((out / "submits" / f"{sid}.json").read_text())
    assert record["submission_id"] == sid and record["job"] == "generate"
    assert record["config"]["output"]["uri"] == str(out) and record["config"]["data"]["classes"] == [5, 9]
    assert head.token not in (out / "submits" / f"{sid}.json").read_text()
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["ray"]["address"] is None  # the job joined the cluster it ran on

    # --no-wait returns at once with the id; the job goes on and is followed with Ray's own CLI
    t0 = time.monotonic()
    quick = argen_cli(head, "submit", "verify", f"ray.address={head.address}", f"output.uri={out}", "--no-wait")
    assert quick.returncode == 0, quick.stderr[-2000:]
    sid2 = quick.stdout.splitlines()[0].split()[4]
    assert sid2.startswith("argen-verify-") and "not waiting" in quick.stdout
    assert time.monotonic() - t0 < 60
    deadline = time.monotonic() + 300
    while True:
        status, body = _get(head, f"/api/jobs/{sid2}", head.token)
        assert status == 200
        if json.loads(body)["status"] in submit.TERMINAL:
            break
        assert time.monotonic() < deadline, "the verify job did not finish in 300 s"
        time.sleep(0.5)
    logs = json.loads(_get(head, f"/api/jobs/{sid2}/logs", head.token)[1])["logs"]
    assert json.loads(body)["status"] == "SUCCEEDED", (json.loads(body).get("message"), logs[-3000:])
    assert "2 of 2 planned shards committed, 2 images" in logs and ": OK" in logs, logs[-2000:]


# -- argen generate beside a live local head (issue: ray.address=null must not join it) --------

def _drivers_on(head: Head) -> int:
    """Drivers the head has seen: every ray.init that joined it is one (the Jobs API lists them)."""
    status, body = _get(head, "/api/jobs/", head.token)
    assert status == 200
    return sum(1 for job in json.loads(body) if job.get("type") == "DRIVER")


@pytest.mark.heavy  # ~47 s; test_submit_generate_then_verify_on_a_local_head covers the head in make test
@pytest.mark.timeout(600)
def test_generate_beside_a_live_local_head(ray_head, tmp_path):
    """With a head of `ray start` running (its address file where Ray looks), ray.address=null starts Ray of
    its own and leaves the head alone; ray.address=auto joins the head on purpose."""
    head = ray_head
    # the head's address file where Ray looks by default (RAY_TMPDIR/ray/ray_current_cluster), as a
    # `ray start --head` without --temp-dir writes it
    ray_tmpdir = Path(tempfile.mkdtemp(prefix="argen-rt-", dir="/tmp"))  # short: Ray's socket paths must fit
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(head.gcs_address)
    env = dict(head.env, RAY_TMPDIR=str(ray_tmpdir))

    def generate(address: str, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "argen"), "generate", *SMALL, f"ray.address={address}",
                               f"output.uri={out}"], env=env, cwd=REPO, capture_output=True, text=True, timeout=400)

    drivers = _drivers_on(head)
    own = generate("null", tmp_path / "own")
    assert own.returncode == 0, own.stdout[-2000:] + own.stderr[-3000:]
    assert json.loads((tmp_path / "own" / "report.json").read_text())["complete"] is True
    assert _drivers_on(head) == drivers  # it never connected to the head

    joined = generate("auto", tmp_path / "joined")
    assert joined.returncode == 0, joined.stdout[-2000:] + joined.stderr[-3000:]
    assert json.loads((tmp_path / "joined" / "report.json").read_text())["complete"] is True
    assert _drivers_on(head) == drivers + 1
    shutil.rmtree(ray_tmpdir, ignore_errors=True)
