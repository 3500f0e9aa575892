"""infra/: each file parsed, and the names it uses cross-checked against argen's config and each other.

cluster.yaml   Ray's own schema (the autoscaler's validate_config after its defaults), the argen commands in
               its comments compose into valid configs, one actor per GPU of the GPU node type
rayjob.yaml    a KubeRay RayJob whose entrypoint composes, whose GPU pods match ray.num_workers, with
               credentials only from a Kubernetes secret
Dockerfile     Ray's image of the RayJob's rayVersion, with the project installed
s3_local.sh    started for real on a free port: the printed commands compose, the bucket exists, S3Sink
               works through it; stopped by signalling its process group
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from jobs.cli import JOBS
from jobs.submit import compose
from accel.models import conditions_of
from pipeline.driver import SECRET_KEY, check_config
from pipeline.plan import build_plan

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
RAY_VERSION = version("ray")


def argen_commands(text: str) -> list[tuple[str, list[str]]]:
    """(job, overrides) of every `argen <job> ...` / `argen submit <job> ...` command line in `text`."""
    found = []
    for line in text.splitlines():
        line = line.lstrip("# ").strip()
        if not line.startswith("argen "):
            continue
        words = shlex.split(line)[1:]
        if words[0] == "submit":
            words = words[1:]
        if words and words[0] in JOBS:  # prose that merely starts with "argen" is not a command
            found.append((words[0], [w for w in words[1:] if "=" in w]))
    return found


def check_generate(overrides: list[str]):
    """The overrides compose (every key exists), pass argen's checks and give a plan."""
    cfg = compose("generate", overrides)
    check_config(cfg)
    build_plan(cfg, *conditions_of(str(cfg.model.name)))
    return cfg


# -- cluster.yaml -------------------------------------------------------------------------------

def test_cluster_yaml_is_a_valid_ray_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's JSON schema, after Ray fills in its AWS defaults
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types and types[raw["head_node_type"]]["resources"].get("CPU") == 0
    assert raw["docker"]["image"] == f"rayproject/ray:{RAY_VERSION}-py311-gpu"  # the Ray these tests run
    assert raw["file_mounts"]["~/argen"] == "." and any("pip install" in c and "~/argen" in c
                                                         for c in raw["setup_commands"])
    for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]:
        if "ray start" in c:
            assert "RAY_AUTH_MODE=token" in c  # the shared token of file_mounts, on every node
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[=:]\s*\S", (INFRA / "cluster.yaml").read_text())


def test_cluster_yaml_commands_match_argen_config_one_actor_per_gpu():
    text = (INFRA / "cluster.yaml").read_text()
    raw = yaml.safe_load(text)
    gpu_types = {k: v for k, v in raw["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU node type"
    total_gpus = sum(v["max_workers"] * v["resources"]["GPU"] for v in gpu_types.values())
    assert total_gpus <= raw["max_workers"] * max(v["resources"]["GPU"] for v in gpu_types.values())
    dashboard = re.search(r"--dashboard-port=(\d+)", " ".join(raw["head_start_ray_commands"])).group(1)

    commands = argen_commands(text)
    assert {job for job, _ in commands} == {"generate", "verify"}
    for job, overrides in commands:
        cfg = check_generate(overrides) if job == "generate" else compose(job, overrides)
        assert cfg.ray.address == f"http://127.0.0.1:{dashboard}"  # `ray dashboard` forwards the Jobs API
        assert str(cfg.output.uri).startswith("s3://")  # a job's local folder would be on one node only
        if job == "generate":
            assert cfg.ray.gpus_per_worker == 1 and cfg.ray.num_workers == total_gpus
            for node in gpu_types.values():
                per_node = node["resources"]["GPU"]
                assert cfg.ray.cpus_per_worker * per_node <= node["resources"]["CPU"]


# -- rayjob.yaml / Dockerfile ---------------------------------------------------------------------

def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def test_rayjob_manifest_matches_argen_config():
    job = yaml.safe_load((INFRA / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["rayClusterSpec"]["rayVersion"] == RAY_VERSION

    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["argen", "generate"] and all("=" in w for w in words[2:])
    cfg = check_generate(words[2:])
    assert cfg.ray.address is None  # inside a Ray Job argen joins the job's cluster
    assert str(cfg.output.uri).startswith("s3://") and cfg.progress is False

    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        for c in _containers(group["template"]):
            limits = c["resources"]["limits"]
            per_pod = int(limits.get("nvidia.com/gpu", 0))
            gpus += group["replicas"] * per_pod
            if per_pod:
                assert c["resources"]["requests"]["nvidia.com/gpu"] == per_pod
                assert float(limits["cpu"]) >= cfg.ray.cpus_per_worker * per_pod / cfg.ray.gpus_per_worker
    assert gpus == cfg.ray.num_workers * cfg.ray.gpus_per_worker  # one actor per GPU, every GPU used

    docker = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", docker, re.M).group(1)
    assert base == f"rayproject/ray:{RAY_VERSION}-py311-gpu"
    images = {c["image"] for c in _containers(cluster["headGroupSpec"]["template"])}
    for group in cluster["workerGroupSpecs"]:
        images |= {c["image"] for c in _containers(group["template"])}
    assert len(images) == 1 and f"-t {images.pop()} " in docker  # the image the Dockerfile's command builds

    # credentials only through a Kubernetes secret, never as literal values
    for template in [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]:
        for c in _containers(template):
            for env in c.get("env", []):
                if SECRET_KEY.search(env["name"]) or env["name"].startswith("AWS_"):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env


def test_dockerfile_installs_the_project():
    docker = (INFRA / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", docker, re.M))
    sources = {w for line in copied for w in line.split()}
    assert {"pyproject.toml", "accel", "pipeline", "jobs"} <= sources
    for name in sources:
        assert (REPO / name).exists(), f"the Dockerfile copies {name}, which the checkout lacks"
    assert re.search(r"^RUN pip install .*?/home/ray/argen\s*$", docker, re.M)


# -- s3_local.sh --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_local_script_serves_a_bucket_argen_can_use(tmp_path, monkeypatch):
    import boto3

    from pipeline.sinks import S3Settings, S3Sink

    port, bucket = _free_port(), f"argen-dev-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = tmp_path / "s3.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([str(INFRA / "s3_local.sh"), str(port), bucket], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops the server" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "s3_local.sh printed nothing in 60 s"
            time.sleep(0.1)
        text = log.read_text()
        assert f"S3 server ready at http://127.0.0.1:{port}" in text
        commands = argen_commands(text)
        assert {job for job, _ in commands} == {"generate", "verify"}
        for job, overrides in commands:
            cfg = compose(job, overrides)
            assert cfg.storage.name == "s3_compatible" and cfg.storage.endpoint_url == f"http://127.0.0.1:{port}"
            assert str(cfg.output.uri).startswith(f"s3://{bucket}/")
        creds = dict(aws_access_key_id="argen-dev-key", aws_secret_access_key="argen-dev-secret")
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", **creds)
        assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["aws_access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["aws_secret_access_key"])
        S3Sink(f"s3://{bucket}/run1", S3Settings(endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1")
               ).preflight()  # argen's own client: write, read back, delete a probe
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    time.sleep(0.3)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the server stopped with it

    bad = subprocess.run([str(INFRA / "s3_local.sh"), "notaport"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "port 'notaport' is not a TCP port number" in bad.stderr
