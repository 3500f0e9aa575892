"""The run: checks, plan, preflight, run.json, then shards on a pool of Ray actors; manifest and report.

Stages, each doing one thing:
  check_config   names, sizes and settings, before anything starts
  build_plan     (pipeline.plan) the shards, a pure function of the config
  open_sink      (pipeline.sinks) + preflight: a probe object written and deleted
  check_run_json the output folder holds this plan or nothing; run.json written first
  committed      shards whose stats file exists are done
  ShardScheduler (pipeline.scheduler) every actor busy; failed shards retried elsewhere; dead actors replaced
  finish         manifest.parquet (also while running) and report.json; a summary line
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from accel.api import ArgenError, option_int
from pipeline import layout
from pipeline.lease import Lease, LeaseLost, acquire
from pipeline.plan import Plan, build_plan, diff_settings
from pipeline.progress import Progress, ProgressBoard, board_reader
from pipeline.report import write_pictures
from pipeline.scheduler import ShardScheduler, workers_record
from pipeline.redaction import describe_error, redact, redact_url
from pipeline.sinks import LocalSink, S3Settings, S3Sink, open_sink
from pipeline.stats import check_stats, manifest_parquet, summarize, utc_now
from pipeline.worker import ShardWorker, WorkerSpec

log = logging.getLogger("argen.pipeline")

SECRET_KEY = re.compile(r"secret|password|passwd|credential|access_key|api_key|(^|_)token$", re.IGNORECASE)


# -- checks -----------------------------------------------------------------------------------

def check_config(cfg: Any) -> None:
    """Everything that can be checked without a model, storage or Ray."""
    model, accel = str(cfg.model.name), str(cfg.accel.name)
    from accel.api import check_compile, check_precision, check_settings, family_of, method_names

    family_of(model)
    if accel not in method_names():
        raise ArgenError(f"unknown accel {accel!r}; known: {', '.join(method_names())}")
    ray_counts(cfg)
    S3Settings.from_config(cfg.get("storage"))  # checked also for a local output.uri: a typo fails now, not later
    ttl = cfg.output.get("lease_ttl_s", 60)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 3:
        raise ArgenError(f"output.lease_ttl_s={ttl!r}; expected seconds >= 3 (the lease is renewed every third)")
    if str(cfg.output.get("check", "size")) not in CHECKS:
        raise ArgenError(f"output.check={cfg.output.check!r}; expected one of {', '.join(CHECKS)}")
    timeout = cfg.ray.get("start_timeout_s", 900)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ArgenError(f"ray.start_timeout_s={timeout!r}; expected seconds > 0 to wait for a worker to be placed "
                         f"and load the generator (900 by default)")
    if not isinstance(cfg.ray.cpus_per_worker, (int, float)) or cfg.ray.cpus_per_worker <= 0:
        raise ArgenError(f"ray.cpus_per_worker={cfg.ray.cpus_per_worker!r}; expected a number > 0")
    if not isinstance(cfg.ray.gpus_per_worker, (int, float)) or cfg.ray.gpus_per_worker < 0:
        raise ArgenError(f"ray.gpus_per_worker={cfg.ray.gpus_per_worker!r}; expected a number >= 0 (1 per GPU)")
    if str(cfg.get("device", "auto")).startswith("cuda") and not cfg.ray.gpus_per_worker:
        raise ArgenError(f"device={cfg.device} but ray.gpus_per_worker={cfg.ray.gpus_per_worker!r}: Ray hides the "
                         f"GPUs from actors that ask for none; pass ray.gpus_per_worker=1 (one actor per GPU)")
    both = set(cfg.model.get("options") or {}) & set(cfg.accel.get("options") or {})
    if both:
        raise ArgenError(f"option(s) {sorted(both)} set in both model.options and accel.options; set each once")
    check_compile(accel, cfg.get("compile", "auto"))
    check_precision(cfg.get("precision", "auto"))
    check_settings(model, accel, generator_options(cfg), checkpoint=cfg.model.get("checkpoint"),
                   tokenizer_checkpoint=cfg.model.get("tokenizer_checkpoint"),
                   random_init=bool(cfg.model.get("random_init", False)))


def _plain(x: Any) -> Any:
    """A config node as plain dicts and lists (what the generators take), {} for an unset one."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else (x or {})


def generator_options(cfg: Any) -> dict[str, Any]:
    """model.options and accel.options together, as the generator takes them."""
    return {**_plain(cfg.model.get("options")), **_plain(cfg.accel.get("options"))}


def ray_counts(cfg: Any) -> tuple[int, int]:
    """(ray.num_workers, ray.max_attempts) as checked integers: a command line may pass them as strings."""
    return (option_int("ray.num_workers", cfg.ray.num_workers, 1, hint="actors generating in parallel"),
            option_int("ray.max_attempts", cfg.ray.max_attempts, 1, hint="tries per shard before the run fails"))


def plain_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, without secrets (for run.json and logs)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    data.pop("hydra", None)

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if not SECRET_KEY.search(str(k))}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str) and "://" in x:
            return redact_url(x)
        return x

    return clean(data)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """argen's version, plus the git commit of a checkout; ARGEN_CODE_VERSION when set (argen submit sets it:
    the checkout it ships has no .git)."""
    if os.environ.get("ARGEN_CODE_VERSION"):
        return os.environ["ARGEN_CODE_VERSION"]
    try:
        from importlib.metadata import version

        v = version("argen")
    except Exception:
        v = "unknown"
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            v += f"+g{rev.stdout.strip()}"
    except Exception:
        pass
    return v


# -- output folder ----------------------------------------------------------------------------

def check_run_json(sink: LocalSink | S3Sink, plan: Plan, config: dict[str, Any]) -> bool:
    """Write run.json, or check that the output holds this same plan. Returns True when resuming."""
    if sink.exists(layout.RUN_JSON):
        try:
            old = json.loads(sink.read(layout.RUN_JSON))
            old_settings, old_hash = old["plan"]["settings"], old["plan"]["hash"]
        except (ValueError, KeyError, TypeError):
            raise ArgenError(f"{sink.uri}/run.json is not an argen run record; use an empty output.uri") from None
        if old_hash == plan.hash:
            if old.get("argen") != code_version():
                log.warning("output.uri=%s was started by argen %s and is resumed by argen %s: if sampling code "
                            "changed in between, the shards generated now differ from what the first version "
                            "would have written (each shard's stats record and manifest row name its version)",
                            sink.uri, old.get("argen"), code_version())
            return True
        changes = diff_settings(old_settings, plan.settings) or ["(settings equal, plan hash differs)"]
        if any(layout.shard_of_stats_key(k) is not None for k in sink.list(layout.SHARDS)):
            raise ArgenError(f"output.uri={sink.uri} holds a different run's plan; changed: " + "; ".join(changes)
                             + ". Resume with the same settings, or pass a new output.uri.")
        # A run that failed before committing anything (a wrong option, a missing checkpoint) holds nothing to
        # protect, and its run.json must not lock the folder against the corrected command. It has ended when
        # its report.json (written on every exit the driver lives through) names its plan; without one it may
        # still be loading its model, and two plans in one folder would mix.
        if not _ended_without_shards(sink, old_hash):
            raise ArgenError(f"output.uri={sink.uri} holds another run's plan (changed: {'; '.join(changes)}) with "
                             f"no shard committed yet and no report of it ending: if that run is still starting, "
                             f"stop it or wait; if it died, delete {sink.uri}/run.json and run again")
        stale = sink.list(layout.SHARDS)  # written by the failed run, none committed: not this plan's
        for key in stale:
            sink.delete(key)
        log.warning("output.uri=%s: replacing the plan of a run that ended without committing a shard (changed: "
                    "%s; %d uncommitted file(s) removed)", sink.uri, "; ".join(changes), len(stale))
    elif any(layout.shard_of_stats_key(k) is not None for k in sink.list(layout.SHARDS)):
        raise ArgenError(f"output.uri={sink.uri} holds shards but no run.json; it is not an argen run "
                         f"(or run.json was deleted); pass an empty output.uri")
    record = {"argen": code_version(), "created_at": utc_now(), "output": sink.uri,
              "plan": {"hash": plan.hash, "settings": plan.settings, "num_samples": plan.num_samples,
                       "num_shards": plan.num_shards},
              "config": config}
    sink.write(layout.RUN_JSON, json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    return False


def _ended_without_shards(sink: LocalSink | S3Sink, plan_hash: str) -> bool:
    try:
        report = json.loads(sink.read(layout.REPORT_JSON)) if sink.exists(layout.REPORT_JSON) else None
    except ValueError:
        return False
    return isinstance(report, dict) and report.get("plan_hash") == plan_hash and not report.get("shards")


# what the driver keeps of each committed shard: the manifest row's and the report's fields, no more, so
# that its memory per shard stays small however many shards a run has
KEPT_FIELDS = ("shard", "count", "bytes", "sha256", "seconds", "generate_seconds", "images_per_second", "flops",
               "worker", "attempt", "finished_at", "argen", "counters", "quality")


def kept(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record.get(k) for k in KEPT_FIELDS}


CHECKS = ("size", "sha256")


def committed_shards(sink: LocalSink | S3Sink, plan: Plan, check: str = "size"
                     ) -> tuple[dict[int, dict[str, Any]], list[dict[str, Any]]]:
    """The kept fields of the shards already committed and intact, and the damaged ones found.

    A shard is kept when its stats file is valid for this plan and its tar exists with the recorded size
    (check="size": a stat or HEAD) and, with check="sha256", the recorded hash (the tar is read); with
    eval.features its features file must exist too. A damaged shard loses its commit marker here, so that
    nothing trusts it while it is regenerated; it is returned as {"shard", "problem"}.
    """
    if check not in CHECKS:
        raise ArgenError(f"output.check={check!r}; expected size (resume checks each shard's tar size, cheap) or "
                         f"sha256 (reads every tar and checks its hash)")
    keys = {}
    for key in sink.list(layout.SHARDS):
        s = layout.shard_of_stats_key(key)
        if s is not None and s < plan.num_shards:
            keys[s] = key
    with_features = str(plan.settings.get("eval.features", "none")) != "none"

    def damage(s: int, record: dict[str, Any]) -> str | None:
        size = sink.size(layout.tar_key(s))
        if size is None:
            return "its tar is missing"
        if size != int(record["bytes"]):
            return f"its tar has {size} bytes, the stats record {record['bytes']}"
        if check == "sha256":
            from pipeline.shards import sha256_hex

            digest = sha256_hex(sink.read(layout.tar_key(s)))
            if digest != record["sha256"]:
                return f"its tar's sha256 is {digest[:12]}..., the stats record {str(record['sha256'])[:12]}..."
        if with_features and sink.size(layout.features_key(s)) is None:
            return "its features file is missing"
        return None

    def read(item: tuple[int, str]) -> tuple[int, dict[str, Any] | None, str | None]:
        s, key = item
        try:
            record = json.loads(sink.read(key))
        except ValueError as e:  # unreadable marker: the shard is redone
            return s, None, f"unreadable stats file ({e})"
        problems = check_stats(record)
        if not problems and (record["shard"] != s or record["count"] != plan.count(s)):
            problems.append(f"shard/count {record['shard']}/{record['count']}, expected {s}/{plan.count(s)}")
        if problems:
            return s, None, "bad stats file (" + "; ".join(problems) + ")"
        problem = damage(s, record)
        return (s, None, problem) if problem else (s, kept(record), None)

    committed: dict[int, dict[str, Any]] = {}
    damaged: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for s, record, problem in pool.map(read, sorted(keys.items())):
            if record is not None:
                committed[s] = record
                continue
            log.warning("shard %d: %s; it is regenerated", s, problem)
            sink.delete(keys[s])  # uncommitted from now on: readers and later resumes do not trust it
            damaged.append({"shard": s, "problem": problem})
    return committed, damaged


# -- the run ----------------------------------------------------------------------------------

@dataclass
class Run:
    plan: Plan
    sink: LocalSink | S3Sink
    committed: dict[int, dict[str, Any]]
    resumed: bool
    repaired: list[dict[str, Any]]  # committed shards found damaged, regenerated by this run
    lease: Lease | None = None      # this run's hold on the output (prepare(take_lease=True))


def prepare(cfg: Any, take_lease: bool = False) -> Run:
    """All checks and the output's set-up, before Ray starts; errors here cost seconds. With take_lease, the
    output's lease is taken before anything is written there (released by the caller, or here on an error)."""
    from accel.api import conditions_of

    check_config(cfg)
    num_classes, takes_prompts = conditions_of(str(cfg.model.name))  # ArgenError naming the known models
    plan = build_plan(cfg, num_classes, takes_prompts)
    sink = open_sink(str(cfg.output.uri), cfg.get("storage"))
    sink.preflight()
    lease = (acquire(sink, float(cfg.output.get("lease_ttl_s", 60)), bool(cfg.output.get("force_takeover", False)))
             if take_lease else None)
    try:
        resumed = check_run_json(sink, plan, plain_config(cfg))
        stale = sink.clean_incomplete()  # this run holds the output: what is half-written now is abandoned
        if stale:
            log.info("removed %d incomplete write(s) left by an earlier run", stale)
        committed, damaged = committed_shards(sink, plan, str(cfg.output.get("check", "size")))
    except BaseException:
        if lease is not None:
            lease.release()
        raise
    return Run(plan=plan, sink=sink, committed=committed, resumed=resumed, repaired=damaged, lease=lease)


def worker_spec(cfg: Any, sink: LocalSink | S3Sink, index: int, warmup_condition: int | str | None = None,
                lease_owner: str | None = None, progress: Any = None) -> WorkerSpec:
    from omegaconf import OmegaConf

    testing = cfg.get("testing") or {}
    eval_cfg = OmegaConf.select(cfg, "eval", default=None)
    gpus = float(cfg.ray.gpus_per_worker)
    return WorkerSpec(
        worker=f"w{index}", model=str(cfg.model.name), accel=str(cfg.accel.name), device=str(cfg.device),
        batch_size=int(cfg.batch_size), sink=sink, checkpoint=cfg.model.get("checkpoint"),
        tokenizer_checkpoint=cfg.model.get("tokenizer_checkpoint"),
        random_init=bool(cfg.model.get("random_init", False)),
        options=generator_options(cfg),
        png_compress_level=int(cfg.output.png_compress_level),
        torch_threads=None if gpus > 0 else max(1, int(cfg.ray.cpus_per_worker)),
        features=str(OmegaConf.select(cfg, "eval.features", default="none") or "none"),
        eval_cfg=_plain(eval_cfg) if eval_cfg is not None else None,
        warmup_condition=warmup_condition, code_version=code_version(), kill_shard=testing.get("kill_shard"),
        kill_point=str(testing.get("kill_point") or "generate"), lease_owner=lease_owner, progress=progress,
        storage=_plain(cfg.get("storage")) or None, compile=cfg.get("compile", "auto"),
        precision=str(cfg.get("precision", "auto")),
    )


def start_ray(cfg: Any) -> bool:
    """Start or join Ray as ray.address says. Returns True when this call started (or joined) it.

    null: inside a Ray Job (Ray sets RAY_ADDRESS for its entrypoint) join that cluster, else start a fresh
    local instance of our own: address="local", so a running head or a stale address file left by a killed
    `ray start` is never joined by accident. auto: join the running local cluster on purpose. Anything else
    (host:port, ray://host:10001) is passed to ray.init as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    address = str(cfg.ray.address) if cfg.ray.address else None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    in_job = os.environ.get("RAY_ADDRESS")
    if address is None and in_job:
        kwargs, tried = {}, f"the Ray Job's cluster (RAY_ADDRESS={redact_url(in_job)})"
    elif address is None:
        need = ray_counts(cfg)[0] * float(cfg.ray.cpus_per_worker)
        kwargs = dict(address="local", num_cpus=max(os.cpu_count() or 1, int(need + 0.999)),
                      include_dashboard=False)
        tried = "a new local Ray instance (ray.address=null)"
        # Ray turns on token auth for a new local instance and says so on the console each time: it stays
        # on, the line goes (a user who sets RAY_AUTH_MODE chooses for themselves)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    else:
        kwargs, tried = dict(address=address, log_to_driver=True), f"ray.address={redact_url(address)}"
    if address is not None:
        _check_reachable(address, tried)
    try:
        ray.init(**kwargs, logging_level=logging.WARNING)  # Ray's start-up lines go to its log files only
    except Exception as e:
        if address == "auto":
            fix = ("ray.address=auto joins a Ray cluster already running on this machine (`ray start --head`); "
                   "start one, or pass ray.address=null to let argen start its own")
        elif address is None:
            fix = "see the lines above from Ray; `ray stop` ends leftover Ray processes of this machine"
        else:
            fix = "check the address (host:port of the head's GCS, or ray://host:10001 for Ray Client) and that " \
                  "the head is running; ray.address=null starts a local Ray instead"
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ArgenError(f"cannot start or join Ray: {tried}: {type(e).__name__}: {reason}; {fix}") from None
    return True


def _check_reachable(address: str, tried: str) -> None:
    """Fail in seconds where ray.init would wait minutes: a head that does not listen (auto finding the address
    file of a head killed without `ray stop`, or a mistyped host:port)."""
    from ray._private.services import canonicalize_bootstrap_address

    if address == "auto":
        try:
            target = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise ArgenError(f"cannot start or join Ray: {tried}: no Ray cluster is running on this machine; start "
                             f"one (`ray start --head`), or pass ray.address=null to let argen start its "
                             f"own") from None
        where = f"the address Ray recorded for its last `ray start` ({target})"
    else:
        target = address.removeprefix("ray://").rsplit("/", 1)[0]
        where = target
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # a form Ray resolves itself (a cluster's service name ...): its own error says what is wrong
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        stale = (" (a head that was stopped without `ray stop` leaves it behind: `ray stop` clears it)"
                 if address == "auto" else "")
        raise ArgenError(f"cannot start or join Ray: {tried}: nothing answers at {where}{stale}: {e}; start the "
                         f"head, or pass ray.address=null to let argen start its own Ray") from None


def _warn_idle_gpus(cfg: Any) -> None:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus and not cfg.ray.gpus_per_worker and str(cfg.get("device", "auto")) != "cpu":  # device=cpu: meant
        log.warning("the Ray cluster has %g GPU(s) but ray.gpus_per_worker=0: the workers see no GPU and generate "
                    "on CPU; pass ray.gpus_per_worker=1 to use them", gpus)


def _nodes() -> int:
    import ray

    try:
        return sum(1 for n in ray.nodes() if n.get("Alive"))
    except Exception:
        return 1


def actor_factory(cfg: Any, sink: LocalSink | S3Sink, warmup_condition: int | str | None = None,
                  lease_owner: str | None = None, progress: Any = None) -> Callable[[int], Any]:
    import ray

    remote_cls = ray.remote(ShardWorker)
    options = dict(num_cpus=float(cfg.ray.cpus_per_worker), num_gpus=float(cfg.ray.gpus_per_worker),
                   max_concurrency=2, max_restarts=0, max_task_retries=0)

    def make(index: int):
        return remote_cls.options(**options).remote(worker_spec(cfg, sink, index, warmup_condition, lease_owner,
                                                                progress))

    return make


RUN_ONLY_KEYS = ("workers", "startup_seconds", "retries", "replaced_workers", "images_per_second_after_startup")


def write_outputs(sink: LocalSink | S3Sink, records: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
                  seconds: float, plan: Plan, extra: dict[str, Any]) -> dict[str, Any]:
    sink.write(layout.MANIFEST, manifest_parquet(records))
    report: dict[str, Any] = {}
    if sink.exists(layout.REPORT_JSON):  # keep what other jobs (evaluate) put there, drop this job's old keys
        try:
            report = json.loads(sink.read(layout.REPORT_JSON))
        except ValueError:
            report = {}
        for key in RUN_ONLY_KEYS:
            report.pop(key, None)
        if new:  # an evaluation of fewer samples than the run now holds is no longer the run's
            from pipeline.evaluation import EVAL_REPORT_KEYS

            for key in EVAL_REPORT_KEYS:
                report.pop(key, None)
    fresh = summarize(records, new, seconds, plan.num_shards, plan.num_samples)
    if not new and report.get("complete") and report.get("images") == fresh["images"] and fresh["complete"]:
        # a rerun that found everything committed: report.json and report.html keep describing the run that
        # generated the shards (its speed, workers, retries), not this run's few seconds of checking
        return {**report, **fresh, **extra}
    report.update(fresh, **extra)
    sink.write(layout.REPORT_JSON, redact(json.dumps(report, indent=1, sort_keys=True)).encode("utf-8"))
    if records:
        try:  # the pictures are a view of the shards: they never fail a run whose shards are committed
            write_pictures(sink, records, report)
        except Exception as e:
            log.warning("could not write contact_sheet.png / report.html: %s", describe_error(e))
    return report


def run(cfg: Any) -> dict[str, Any]:
    """`argen generate`: make every shard of the plan exist under output.uri. Returns report.json's content."""
    t0 = time.perf_counter()
    job = prepare(cfg, take_lease=True)
    plan, sink, committed = job.plan, job.sink, dict(job.committed)
    job.lease.start_heartbeat()
    todo = [plan.shard(s) for s in range(plan.num_shards) if s not in committed]
    new: list[dict[str, Any]] = []
    extra: dict[str, Any] = {"model": str(cfg.model.name), "accel": str(cfg.accel.name), "plan_hash": plan.hash,
                             "finished_at": None, "repaired_shards": job.repaired}
    interval = float(cfg.output.get("manifest_interval_s", 30))
    last_manifest = [time.perf_counter()]
    started_ray = False
    scheduler = None
    progress = None
    ok = False
    try:
        if todo:
            started_ray = start_ray(cfg)
            _warn_idle_gpus(cfg)
            num_workers, max_attempts = ray_counts(cfg)
            if isinstance(sink, LocalSink) and _nodes() > 1:
                log.warning("output.uri=%s is a local folder but the Ray cluster has %d nodes: each node writes "
                            "to its own disk unless the folder is on a shared filesystem; use s3://... instead",
                            sink.uri, _nodes())
            import ray

            # batches reported by the workers; also Ray metrics tagged with the plan's hash
            board = ray.remote(ProgressBoard).options(num_cpus=0).remote(plan.hash[:12])
            read_board = board_reader(board)
            scheduler = ShardScheduler(actor_factory(cfg, sink, plan.conditions[0], job.lease.owner, board),
                                       num_workers=min(num_workers, len(todo)), max_attempts=max_attempts,
                                       start_timeout_s=float(cfg.ray.get("start_timeout_s", 900)))
            infos = scheduler.start()
            t_ready = time.perf_counter()
            extra["startup_seconds"] = t_ready - t0  # checks, Ray, actors loading the model
            extra["workers"] = workers_record(infos)
            progress = Progress(sum(t.count for t in todo), plan.num_shards, len(committed),
                                bool(cfg.get("progress", True)))

            def on_commit(record: dict[str, Any]) -> None:
                record = kept(record)
                committed[int(record["shard"])] = record
                new.append(record)
                progress.shard_done(int(record["shard"]), int(record["count"]))
                board.forget.remote(int(record["shard"]))
                if time.perf_counter() - last_manifest[0] >= interval:
                    try:  # a progress copy: the shards are committed, and the end of the run writes it again
                        sink.write(layout.MANIFEST, manifest_parquet(committed.values()))
                    except Exception as e:  # a storage hiccup here must not fail a run whose shards are safe
                        log.warning("could not update manifest.parquet (%s: %s); the run goes on and writes it "
                                    "at the end", type(e).__name__, e)
                    last_manifest[0] = time.perf_counter()

            def on_tick() -> None:
                partial = read_board()
                if partial is not None:
                    progress.batches(partial)
                if job.lease.lost.is_set():
                    raise LeaseLost(f"another run took over output.uri={sink.uri}; this run stopped")

            scheduler.on_commit, scheduler.on_tick = on_commit, on_tick
            scheduler.run(todo)
        ok = True
    finally:
        if progress is not None:
            progress.close()
        if scheduler is not None:
            extra["retries"] = scheduler.failures
            extra["replaced_workers"] = scheduler.replaced
            extra["workers"] = workers_record(scheduler.worker_infos)  # with those that joined late
            scheduler.shutdown()
        seconds = time.perf_counter() - t0
        if "startup_seconds" in extra and seconds > extra["startup_seconds"]:
            extra["images_per_second_after_startup"] = (sum(int(r["count"]) for r in new)
                                                        / (seconds - extra["startup_seconds"]))
        extra["finished_at"] = utc_now() if ok else None
        try:
            report = write_outputs(sink, list(committed.values()), new, seconds, plan, extra)
        except Exception as e:
            if ok:
                raise
            if isinstance(e, ArgenError):  # e.g. the disk is full: one clear line, the run's own error follows
                log.error("could not write manifest.parquet / report.json after the failure: %s", e)
            else:
                log.exception("could not write manifest.parquet / report.json after the failure")
        finally:
            if started_ray:
                import ray

                ray.shutdown()
            job.lease.release()  # last: the output is this run's until its report is written
    print_summary(report, sink, job.resumed)
    return report


def print_summary(report: dict[str, Any], sink: LocalSink | S3Sink, resumed: bool) -> None:
    skipped = report["shards"] - report["generated_shards"]
    where = sink.describe() if isinstance(sink, S3Sink) else sink.uri
    if report["generated_shards"] == 0 and report["complete"] and not report.get("repaired_shards"):
        print(f"argen generate: nothing left to do: all {report['shards']} shards ({report['images']} images) are "
              f"committed in {where}", flush=True)
        return
    print(f"argen generate: {report['shards']} shards, {report['images']} images "
          f"({report['generated_images']} generated in this run, {skipped} shards already there"
          f"{', resumed' if resumed else ''}); {report['seconds']:.1f} s, "
          f"{report['images_per_second']:.2f} images/s"
          + (f" ({report['images_per_second_after_startup']:.2f} after {report['startup_seconds']:.1f} s start-up)"
             if "startup_seconds" in report else ""), flush=True)
    print(f"output: {where}  (shards/, manifest.parquet, report.json, run.json)", flush=True)
