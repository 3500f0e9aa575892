"""`argen submit <job> [overrides] [--no-wait]`: the same Hydra job as a Ray Job on a running cluster.

    argen submit generate ray.address=http://head:8265 model=var_d16 accel=fastvar output.uri=s3://bucket/run ...
    argen submit verify   ray.address=http://head:8265 output.uri=s3://bucket/run --no-wait

`ray.address` is the head's Jobs API (the dashboard port, 8265 by default). The project (this checkout,
without .venv, outputs and other ignored files) travels as the job's working_dir; the cluster's Python
must already have argen's dependencies. The overrides are checked here first (unknown keys, a missing
address, an output a job could not keep), then the job is submitted, its id printed and its logs
followed until it ends (`--no-wait`: return at once). Exit status: the job's (0 when it succeeded).

A job's working directory is temporary, so the job first writes its resolved config (no secrets) and
the submission's details to `<output.uri>/submits/<submission id>.json`, next to the run's output,
then runs `argen <job>` on the cluster (which joins the cluster it runs on: ray.address is cleared).

Credentials never travel with the job: the cluster's nodes need their own (instance role, a Kubernetes
secret, or their environment). A cluster with token authentication (the default of Ray 2.60's
`ray start`) needs RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH) here.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from accel.api import ArgenError
from pipeline import layout

SUBMITTABLE = ("generate", "evaluate", "verify")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accel", "pipeline", "jobs")
# never shipped: environments, outputs, caches, weights (ray also honours the project's .gitignore); but the
# committed toy weights are (the default model, and eval.features=toy), seen from the checkout (working_dir)
# or from the accel package (py_modules)
EXCLUDES = [".venv", "venv", ".git", "**/__pycache__", "*.egg-info", "build", "outputs", "multirun", "argen_output",
            "demo_output", "bench_output", ".pytest_cache", "*.tar", "*.parquet", "*.pth", "*.safetensors", "*.ckpt",
            "!accel/toy/weights/*.safetensors", "!toy/weights/*.safetensors"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
USAGE = ("usage: argen submit <job> [key=value ...] [--no-wait]\n"
         f"  job: one of {', '.join(SUBMITTABLE)}; ray.address=http://HEAD:8265 (the head's Jobs API) is required\n"
         "  example: argen submit generate ray.address=http://head:8265 output.uri=s3://bucket/run model=var_d16")


def compose(job: str, overrides: list[str]) -> Any:
    """The job's config with the overrides applied (unknown keys and bad values fail here, before submitting)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from jobs.common import CONF_DIR, check_config_keys

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=f"argen-{job}"):
            cfg = hydra_compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        said = " ".join(str(e).split("\nConfig search path:")[0].split())  # keeps Hydra's hint (+key=..., options)
        raise ArgenError(f"bad override for argen {job}: {said}; see jobs/conf/config.yaml for the keys") from None
    check_config_keys(cfg)
    return cfg


def jobs_api_address(cfg: Any) -> str:
    """ray.address as the Jobs API URL (http(s)://host:port)."""
    address = cfg.ray.address
    if not address:
        raise ArgenError("ray.address is not set; pass ray.address=http://HEAD:8265 (the head's Jobs API, "
                         "the dashboard port)")
    address = str(address)
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = ""
        if address == "auto" or parts.scheme == "ray" or (not parts.scheme and ":" in address):
            hint = " (that is a Ray Client or GCS address; the Jobs API listens on the dashboard port, 8265)"
        raise ArgenError(f"ray.address={address!r}{hint}; expected http://HEAD:8265")
    return address.rstrip("/")


def check_output(cfg: Any) -> str:
    """output.uri as the job will see it; a relative local path would land in the job's temporary folder."""
    uri = str(cfg.output.uri)
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        return uri
    path = urlsplit(uri).path if scheme == "file" else uri
    if not Path(path).expanduser().is_absolute():
        raise ArgenError(f"output.uri={uri!r} is a relative path: a Ray Job runs in a temporary working directory "
                         f"that is deleted afterwards; pass s3://bucket/prefix, or an absolute path on a "
                         f"filesystem every node of the cluster shares")
    return uri


def new_submission_id(job: str) -> str:
    """argen-<job>-<UTC time>-<random>: no user text (it becomes an object key)."""
    return f"argen-{job}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def ships_checkout(root: Path = PROJECT_ROOT) -> bool:
    """Whether the job gets the source checkout as its working directory (else the installed packages)."""
    return (root / "pyproject.toml").is_file() and all((root / p).is_dir() for p in PACKAGES)


def conditions_file_for_cluster(cfg: Any, root: Path = PROJECT_ROOT) -> str | None:
    """data.conditions_file as the job on the cluster will open it: a file inside the checkout travels with it
    (its path relative to the checkout, where the job runs); any other file must be on a filesystem every
    node shares, at its absolute path. None when no file is named."""
    name = cfg.get("data", {}).get("conditions_file")
    if not name:
        return None
    path = Path(str(name)).expanduser().resolve()
    if not path.is_file():
        raise ArgenError(f"data.conditions_file={str(name)!r} is not a file here ({path}); the job on the cluster "
                         f"reads it from the checkout argen submit ships, or from a shared filesystem")
    if ships_checkout(root) and path.is_relative_to(root.resolve()):
        relative = path.relative_to(root.resolve()).as_posix()
        from ray._private.thirdparty.pathspec import PathSpec  # the matcher Ray's packaging applies to EXCLUDES

        spec = PathSpec.from_lines("gitwildmatch", EXCLUDES)
        folders = [p.as_posix() for p in Path(relative).parents if p != Path(".")]
        if any(spec.match_file(f) or spec.match_file(f + "/") for f in folders):
            raise ArgenError(f"data.conditions_file={str(name)!r} is in a folder argen submit does not ship "
                             f"(outputs, environments, caches); move it elsewhere in the checkout, e.g. data/")
        return relative
    print(f"argen submit: data.conditions_file={path} is outside the shipped checkout; every node of the cluster "
          f"must see it at that path", file=sys.stderr, flush=True)
    return str(path)


def runtime_env(root: Path = PROJECT_ROOT, conditions_file: str | None = None) -> dict[str, Any]:
    """Ship the project: its source checkout as working_dir, or the three packages when installed elsewhere.
    conditions_file: a path inside the checkout (from conditions_file_for_cluster) that must travel with it."""
    from pipeline.driver import code_version

    env: dict[str, Any] = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
                                        "ARGEN_CODE_VERSION": code_version()}}  # the shipped copy has no .git
    if ships_checkout(root):
        env["working_dir"] = str(root)
        env["excludes"] = list(EXCLUDES)
        if conditions_file and not Path(conditions_file).is_absolute():
            env["excludes"].append("!/" + conditions_file)  # even a .parquet, which is otherwise not shipped
    else:
        import importlib

        env["py_modules"] = [str(Path(importlib.import_module(p).__file__).parent) for p in PACKAGES]
        env["excludes"] = list(EXCLUDES)
    return env


def entrypoint(job: str, overrides: list[str], submission_id: str, address: str,
               conditions_file: str | None = None) -> str:
    """The shell command the cluster runs: this module's in-job mode, quoted for a shell."""
    args = ["python", "-m", "jobs.submit", "--in-job", submission_id, address, job]
    return shlex.join(args + job_overrides(overrides, conditions_file))


def job_overrides(overrides: list[str], conditions_file: str | None = None) -> list[str]:
    """The user's overrides for the job on the cluster: the job joins its own cluster (ray.address cleared), and
    reads data.conditions_file where it is there (conditions_file_for_cluster)."""
    replaced = {"ray.address"} | ({"data.conditions_file"} if conditions_file else set())
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in replaced]
    if conditions_file:
        kept.append(f"data.conditions_file={json.dumps(conditions_file)}")  # quoted: any character survives Hydra
    return kept + ["ray.address=null"]


def submission_record(cfg: Any, job: str, submission_id: str, address: str, overrides: list[str]) -> dict[str, Any]:
    from pipeline.driver import code_version, plain_config
    from pipeline.redaction import redact, redact_url
    from pipeline.stats import utc_now

    return {"submission_id": submission_id, "job": job, "address": redact_url(address), "started_at": utc_now(),
            "argen": code_version(), "config": plain_config(cfg),
            "overrides": [redact(o) for o in overrides if not _secret_override(o)]}


def _secret_override(override: str) -> bool:
    from pipeline.driver import SECRET_KEY

    key = override.split("=", 1)[0].lstrip("+~")
    return any(SECRET_KEY.search(part) for part in key.split("."))


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:
        text = str(e)
        if "auth" in text.lower() and "token" in text.lower():
            raise ArgenError(f"the Ray cluster at ray.address={address} requires a token: export RAY_AUTH_MODE=token "
                             f"and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) with the head's token "
                             f"(`ray get-auth-token` on the head)") from None
        raise ArgenError(f"cannot reach the Ray Jobs API at ray.address={address} ({type(e).__name__}: "
                         f"{text.splitlines()[0][:200] if text else ''}); check the host and port (the dashboard "
                         f"port, 8265 by default) and that the cluster runs ray[default]") from None


async def _follow(client: Any, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)


def submit(argv: list[str]) -> int:
    """Check, submit, print the id, follow the logs (unless --no-wait). Returns the exit status."""
    args = list(argv)
    wait = "--no-wait" not in args
    args = [a for a in args if a != "--no-wait"]
    flags = [a for a in args if a.startswith("--")]
    if flags:
        raise ArgenError(f"unknown option(s) {flags}; the only option is --no-wait\n{USAGE}")
    if not args:
        raise ArgenError(f"which job? {USAGE}")
    job, overrides = args[0], args[1:]
    if job not in SUBMITTABLE:
        raise ArgenError(f"cannot submit {job!r}; submittable jobs: {', '.join(SUBMITTABLE)}\n{USAGE}")
    cfg = compose(job, overrides)
    address = jobs_api_address(cfg)
    uri = check_output(cfg)
    if job == "generate":
        from pipeline.driver import check_config

        check_config(cfg)  # names and sizes, before anything reaches the cluster
    conditions_file = conditions_file_for_cluster(cfg)
    submission_id = new_submission_id(job)
    client = _client(address)
    command = entrypoint(job, overrides, submission_id, address, conditions_file)
    client.submit_job(entrypoint=command, submission_id=submission_id,
                      runtime_env=runtime_env(conditions_file=conditions_file), metadata={"argen_job": job})
    print(f"argen submit: submitted job {submission_id} to {address}", flush=True)
    print(f"argen submit: the job saves its resolved config to {uri.rstrip('/')}/{layout.submit_key(submission_id)}",
          flush=True)
    if not wait:
        print(f"argen submit: not waiting; follow with `ray job logs -f {submission_id} --address {address}`, "
              f"stop with `ray job stop {submission_id} --address {address}`", flush=True)
        return 0
    try:
        asyncio.run(_follow(client, submission_id))
        status = str(client.get_job_status(submission_id))
        while status.split(".")[-1] not in TERMINAL:  # the log stream can end just before the status does
            time.sleep(1)
            status = str(client.get_job_status(submission_id))
    except KeyboardInterrupt:
        print(f"\nargen submit: stopped following; job {submission_id} keeps running "
              f"(`ray job stop {submission_id} --address {address}` stops it)", file=sys.stderr, flush=True)
        return 130
    status = status.split(".")[-1]
    print(f"argen submit: job {submission_id} {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def run_in_job(submission_id: str, address: str, job: str, overrides: list[str]) -> int:
    """On the cluster: save the resolved config next to the run's output, then run the job."""
    from pipeline.sinks import open_sink

    cfg = compose(job, overrides)
    record = submission_record(cfg, job, submission_id, address, overrides)
    sink = open_sink(str(cfg.output.uri), cfg.get("storage"))
    sink.write(layout.submit_key(submission_id), json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    print(f"argen submit: job {submission_id} on the cluster; resolved config saved to "
          f"{sink.uri}/{layout.submit_key(submission_id)}", flush=True)
    from jobs.cli import main as argen

    return argen([job, *overrides])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        if argv[:1] == ["--in-job"]:
            if len(argv) < 4:
                raise ArgenError("--in-job needs <submission id> <address> <job> [overrides]")
            return run_in_job(argv[1], argv[2], argv[3], argv[4:])
        return submit(argv)
    except ArgenError as e:
        print(f"argen submit: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from jobs.cli import entry

    entry(main)  # the cluster runs the job this way: its status must be the job's, not a teardown abort
