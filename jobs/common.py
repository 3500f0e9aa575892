"""What every Hydra job shares: the config tree, a check of every key, exit codes, redacted errors.

Exit codes: 0 done, 1 the job ran and failed (shards kept failing, the store stayed down, a check found
problems), 2 bad input (a config key, value, group or path; argen's message names it and the fix).
"""
from __future__ import annotations

import difflib
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from accel.api import ArgenError

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("model", "accel", "storage")
# nodes whose keys are free: sampling options, checked by the generator against its own option names
FREE_FORM = ("model.options", "accel.options")
# libraries whose INFO lines ("Found credentials in environment variables.") are noise on a console
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "filelock")


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node and prefix not in FREE_FORM:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix


@functools.lru_cache(maxsize=1)
def known_keys() -> frozenset[str]:
    """Every key of the config tree: config.yaml's and those of each model / accel / storage file."""
    from omegaconf import OmegaConf

    def load(path: Path) -> dict[str, Any]:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        return {k: v for k, v in data.items() if k not in ("defaults", "hydra")}

    keys = set(_leaf_paths(load(CONF_DIR / "config.yaml")))
    for group in GROUPS:
        for path in sorted((CONF_DIR / group).glob("*.yaml")):
            keys.update(_leaf_paths(load(path), group))
    return frozenset(keys)


def unknown_keys(cfg: Any) -> list[str]:
    """Keys of `cfg` that the config tree does not have (a typo, often added with `+`), each with the closest
    known key when there is one."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    data.pop("hydra", None)
    known = known_keys()
    out = []
    for path in _leaf_paths(data):
        if path in known or any(path.startswith(f + ".") for f in FREE_FORM):
            continue
        close = difflib.get_close_matches(path, sorted(known), n=1, cutoff=0.75)
        out.append(f"{path} (did you mean {close[0]}?)" if close else path)
    return out


def check_config_keys(cfg: Any) -> None:
    bad = unknown_keys(cfg)
    if bad:
        raise ArgenError(f"unknown config key(s): {', '.join(bad)}; the keys are those of jobs/conf/config.yaml and "
                         f"its model / accel / storage groups (`argen <job> --cfg job` prints them); model.options "
                         f"and accel.options take the model's sampling options")


def run_job(job: str, task: Callable[[Any], int | None]) -> int:
    """Compose the config from sys.argv (Hydra), check its keys, run task(cfg); returns the exit code.

    ArgenError is bad input: its message (redacted) on stderr, code 2. Hydra's own errors (an unknown group
    option, a malformed override) happen before the task and are bad input too: code 2, not Hydra's 1.
    """
    import hydra

    from pipeline.redaction import install_log_redaction, redact
    from pipeline.sinks import read_inputs_with

    state: dict[str, Any] = {"started": False, "code": 0}

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def app(cfg: Any) -> None:
        state["started"] = True
        install_log_redaction()
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            check_config_keys(cfg)
            read_inputs_with(cfg.get("storage"))
            state["code"] = int(task(cfg) or 0)
        except ArgenError as e:
            print(f"argen {job}: error: {redact(str(e))}", file=sys.stderr, flush=True)
            state["code"] = 2

    try:
        app()
    except SystemExit as e:
        if state["started"]:
            raise
        return 2 if e.code not in (0, None) else 0
    return state["code"]
