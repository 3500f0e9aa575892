"""`argen bench pipeline`: the bare generator's images/s vs the whole pipeline's, measured in one run.

Rows, all on the same model, batch size and images:
  bare generator   load_generator() + generate() in a loop in this process (torch threads = ray.cpus_per_worker)
  pipeline local   `argen generate` with 1 worker to a local folder (Ray, PNG encode, tar, write, stats)
  pipeline S3      the same to a moto S3 server over HTTP on 127.0.0.1 (started here)
  pipeline Nw      N workers to a local folder (scaling; ratio vs 1 worker)

The pipeline's steady-state rate is images / (wall time after the actor pool has loaded the model);
the whole-run rate (including Ray start-up and model loading) is shown beside it.

Options (key=value): images=48  workers=2  batch_size=8  shard_size=16  reps=1  s3=true
and any config override (model=..., accel=..., device=..., ray.cpus_per_worker=...).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_KEYS = ("images", "workers", "reps", "s3")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from jobs.common import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def bare_generator(cfg: Any, images: int) -> dict[str, float]:
    """images/s of generate() alone, in a loop over the same conditions and seeds as the run."""
    import torch

    from accel.api import load_generator
    from accel.api import conditions_of
    from pipeline.plan import build_plan

    if float(cfg.ray.gpus_per_worker) == 0:
        torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    opts = {**(cfg.model.options or {}), **(cfg.accel.options or {})}
    gen = load_generator(cfg.model.name, accel=cfg.accel.name, device=cfg.device, checkpoint=cfg.model.checkpoint,
                         tokenizer_checkpoint=cfg.model.tokenizer_checkpoint, random_init=cfg.model.random_init,
                         **opts)
    plan = build_plan(cfg, *conditions_of(str(cfg.model.name)))
    bs = int(cfg.batch_size)
    gen.generate(list(plan.conditions[:1]), [0])  # warm-up, as the workers' first batch is not special either
    t0 = time.perf_counter()
    for task in plan.shards():
        for b in range(0, task.count, bs):
            gen.generate(list(task.conditions[b:b + bs]), list(task.seeds[b:b + bs]))
    seconds = time.perf_counter() - t0
    del gen
    return {"images": images, "seconds": seconds, "steady": images / seconds, "whole": images / seconds}


def pipeline_run(cfg: Any) -> dict[str, float]:
    from pipeline.driver import run

    report = run(cfg)
    steady = report.get("images_per_second_after_startup", report["images_per_second"])
    steady_seconds = report["seconds"] - report.get("startup_seconds", 0.0)
    workers = len(report.get("workers", [])) or 1
    # share of the workers' time spent inside generate(): 100% = the generator never waits on the pipeline
    busy = report["generate_seconds"] / (steady_seconds * workers) if steady_seconds > 0 else 0.0
    return {"images": report["generated_images"], "seconds": report["seconds"], "steady": steady,
            "whole": report["images_per_second"], "startup": report.get("startup_seconds", 0.0), "busy": busy}


def run(overrides: dict[str, str]) -> None:
    import ray

    images = int(overrides.pop("images", "48"))
    workers = int(overrides.pop("workers", "2"))
    reps = int(overrides.pop("reps", "1"))
    with_s3 = overrides.pop("s3", "true").lower() in ("1", "true", "yes")
    base = [f"{k}={v}" for k, v in overrides.items()]
    base = ["batch_size=8", "output.shard_size=16", "device=cpu", "progress=false", "data.classes=null",
            f"data.num_classes={images}", "data.per_class=1"] + base
    cfg = _compose(base)
    tmp = Path(tempfile.mkdtemp(prefix="argen-bench-pipeline-"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # moto needs some credentials; set before Ray starts so the workers inherit them (dummy values only
    # when none are set)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "argen-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "argen-bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    need = max(workers, 1) * float(cfg.ray.cpus_per_worker)
    ray.init(address="local", num_cpus=max(int(need + 0.999), 1), include_dashboard=False, log_to_driver=False)
    server = None
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        print(f"model={cfg.model.name} accel={cfg.accel.name} device={cfg.device} images={images} "
              f"batch_size={cfg.batch_size} shard_size={cfg.output.shard_size} "
              f"cpus_per_worker={cfg.ray.cpus_per_worker} reps={reps} (best of reps)\n", flush=True)
        runs: dict[str, list[dict[str, float]]] = {}

        def best(name: str, r: dict[str, float]) -> None:
            runs.setdefault(name, []).append(r)

        if with_s3:
            import boto3
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            bucket = "argen-bench"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        for rep in range(reps):
            best("bare generator", bare_generator(cfg, images))
            best("pipeline, 1 worker, local", pipeline_run(_compose(base + [
                f"output.uri={tmp / f'local-{rep}'}", "ray.num_workers=1"])))
            if with_s3:
                best("pipeline, 1 worker, S3 (moto)", pipeline_run(_compose(base + [
                    f"output.uri=s3://{bucket}/{uuid.uuid4().hex[:8]}", "ray.num_workers=1", "storage=s3_compatible",
                    f"storage.endpoint_url={endpoint}"])))
            if workers > 1:
                best(f"pipeline, {workers} workers, local", pipeline_run(_compose(base + [
                    f"output.uri={tmp / f'local{workers}-{rep}'}", f"ray.num_workers={workers}"])))
        rows = [(name, max(rs, key=lambda r: r["steady"])) for name, rs in runs.items()]
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    bare = rows[0][1]["steady"]
    one = next(r for n, r in rows if n == "pipeline, 1 worker, local")["steady"]
    print(f"\nload average after the runs: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("\n| setup | images | images/s (steady) | vs bare generator | generator busy | images/s (whole run) "
          "| start-up s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        ratio = r["steady"] / bare
        extra = f" ({r['steady'] / one:.2f}x 1 worker)" if "workers" in name else ""
        busy = f"{r['busy']:.1%}" if "busy" in r else "100% (by definition)"
        print(f"| {name} | {int(r['images'])} | {r['steady']:.3f} | {ratio:.1%}{extra} | {busy} | {r['whole']:.3f} "
              f"| {r.get('startup', 0.0):.1f} |")
