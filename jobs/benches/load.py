"""`argen bench load`: many small shards through the whole pipeline; throughput, driver cost, driver memory.

One `argen generate` run (in this process, so the driver can be watched) of `shards` shards of
`shard_size` images on `workers` actors, to a local folder (or a moto S3 server with s3=true). A sampler
thread records, every `interval` seconds, the committed shards (stats files), the driver's RSS, its
Python heap (tracemalloc) and its CPU time (less the sampler's own). Reported:

  shards/s           committed shards / wall time after the actors loaded the model (steady state)
  driver CPU/shard   slope of the driver process's CPU seconds over committed shards (steady state)
  pipeline overhead  (workers x steady wall - sum of generate() seconds) / shards: the time per shard the
                     generators were not generating (scheduling, PNG encoding, tar, write, stats)
  memory             RSS and Python heap at 25/50/100% of the shards, and their growth per shard over the
                     second half (least squares): flat = no growth with the number of shards
  manifest rows      rows of manifest.parquet (must equal the shards), and `argen verify`'s verdict

Options (key=value): shards=2000 workers=2 shard_size=1 interval=2 s3=false, and any config override
(model=..., batch_size=..., ray.cpus_per_worker=...). Default model var_tiny at 256x256, batch_size 1.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_KEYS = ("shards", "workers", "shard_size", "interval", "s3")


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Sample:
    t: float
    shards: int
    rss: int
    heap: int
    cpu: float  # process CPU seconds, less the sampler's own


@dataclass
class LoadResult:
    report: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)  # taken while the run was going on (the last one
    #                                                      after its last commit, before run() returned)
    manifest_rows: int = 0
    manifest_unique: int = 0
    verify_ok: bool = False
    verify_problems: list[str] = field(default_factory=list)

    @property
    def steady_seconds(self) -> float:
        return self.report["seconds"] - self.report.get("startup_seconds", 0.0)

    @property
    def shards_per_second(self) -> float:
        return self.report["generated_shards"] / self.steady_seconds if self.steady_seconds > 0 else 0.0

    def generators_busy(self) -> float:
        """Share of the workers' steady wall time spent inside generate()."""
        workers = len(self.report.get("workers", [])) or 1
        return self.report["generate_seconds"] / (workers * self.steady_seconds) if self.steady_seconds > 0 else 0.0

    def overhead_per_shard(self) -> float:
        workers = len(self.report.get("workers", [])) or 1
        n = self.report["generated_shards"]
        return (workers * self.steady_seconds - self.report["generate_seconds"]) / n if n else 0.0

    def _second_half(self) -> list[Sample]:
        total = self.report["generated_shards"]
        return [s for s in self.samples if total / 2 <= s.shards < total]

    @staticmethod
    def _slope(xs: list[float], ys: list[float]) -> float:
        if len(xs) < 3 or max(xs) == min(xs):
            return float("nan")
        return statistics.linear_regression(xs, ys).slope

    def growth_per_shard(self, what: str) -> float:
        """Least-squares bytes per committed shard of `rss` or `heap` over the second half of the run.

        Each committed-shard count contributes its lowest sample: what is retained, without the
        transient allocations (a record being deserialized, a manifest being written) caught mid-way.
        """
        lowest: dict[int, int] = {}
        for s in self._second_half():
            lowest[s.shards] = min(lowest.get(s.shards, getattr(s, what)), getattr(s, what))
        xs = sorted(lowest)
        return self._slope([float(x) for x in xs], [float(lowest[x]) for x in xs])

    def driver_cpu_per_shard(self) -> float:
        running = [s for s in self.samples if 0 < s.shards < self.report["generated_shards"]]
        return self._slope([float(s.shards) for s in running], [s.cpu for s in running])

    def at_fraction(self, what: str, fraction: float) -> int:
        """`rss` or `heap` when that fraction of the shards had committed: the lowest sample at the nearest
        committed count (what is retained; at 100% the report being drawn is transient)."""
        target = fraction * self.report["generated_shards"]
        nearest = min(abs(s.shards - target) for s in self.samples)
        return int(min(getattr(s, what) for s in self.samples if abs(s.shards - target) == nearest))


class Sampler(threading.Thread):
    """Samples the driver's memory and CPU against committed shards every `interval` seconds."""

    def __init__(self, count_committed, interval: float):
        super().__init__(daemon=True, name="argen-load-sampler")
        self.count_committed, self.interval = count_committed, interval
        self.samples: list[Sample] = []
        self.stop_event = threading.Event()
        self.own_cpu = 0.0

    def take(self) -> None:
        t0 = time.thread_time()
        n = self.count_committed()
        heap = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
        self.own_cpu += time.thread_time() - t0
        self.samples.append(Sample(t=time.perf_counter(), shards=n, rss=rss_bytes(), heap=heap,
                                   cpu=time.process_time() - self.own_cpu))

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.take()


def local_counter(shards_dir: Path):
    def count() -> int:
        try:
            with os.scandir(shards_dir) as it:
                return sum(1 for e in it if e.name.endswith(".stats.json"))
        except FileNotFoundError:
            return 0
    return count


def measure_run(cfg: Any, interval: float = 2.0, trace_heap: bool = True) -> LoadResult:
    """Run `argen generate` for `cfg` in this process while sampling the driver; then check the output."""
    import io

    import pyarrow.parquet as pq

    from jobs.verify import verify_output
    from pipeline.driver import run
    from pipeline.sinks import LocalSink, open_sink

    sink = open_sink(str(cfg.output.uri), cfg.get("storage"))
    if isinstance(sink, LocalSink):
        counter = local_counter(sink.root / "shards")
    else:
        counter = lambda: sum(1 for k in sink.list("shards/") if k.endswith(".stats.json"))  # noqa: E731
    sampler = Sampler(counter, interval)
    if trace_heap:
        tracemalloc.start()
    sampler.take()
    sampler.start()
    try:
        report = run(cfg)
    finally:
        sampler.stop_event.set()
        sampler.join()
        if trace_heap:
            tracemalloc.stop()
    result = LoadResult(report=report, samples=sampler.samples)
    rows = pq.read_table(io.BytesIO(sink.read("manifest.parquet"))).to_pylist()
    result.manifest_rows = len(rows)
    result.manifest_unique = len({r["shard"] for r in rows})
    verdict = verify_output(sink)
    result.verify_ok, result.verify_problems = verdict.ok, verdict.problems
    return result


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from jobs.common import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def run(overrides: dict[str, str]) -> None:
    import ray

    shards = int(overrides.pop("shards", "2000"))
    workers = int(overrides.pop("workers", "2"))
    shard_size = int(overrides.pop("shard_size", "1"))
    interval = float(overrides.pop("interval", "2"))
    with_s3 = overrides.pop("s3", "false").lower() in ("1", "true", "yes")
    samples = shards * shard_size
    per_class = -(-samples // 1000)  # var_tiny has 1000 classes
    if samples % per_class:
        raise SystemExit(f"argen bench load: shards x shard_size = {samples} must be a multiple of {per_class} "
                         f"(images per class over 1000 classes); pick another shards=")
    base = ["model=var_tiny", "batch_size=1", "device=cpu", "progress=false", "data.classes=null",
            f"data.num_classes={samples // per_class}", f"data.per_class={per_class}",
            f"output.shard_size={shard_size}", f"ray.num_workers={workers}"]
    base += [f"{k}={v}" for k, v in overrides.items()]
    tmp = Path(tempfile.mkdtemp(prefix="argen-bench-load-"))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "argen-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "argen-bench")
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = None
    try:
        if with_s3:
            import boto3
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="argen-bench")
            where = [f"output.uri=s3://argen-bench/{uuid.uuid4().hex[:8]}", "storage=s3_compatible",
                     f"storage.endpoint_url={endpoint}"]
        else:
            where = [f"output.uri={tmp / 'out'}"]
        cfg = _compose(base + where)
        need = workers * float(cfg.ray.cpus_per_worker)
        ray.init(address="local", num_cpus=max(int(need + 0.999), 1), include_dashboard=False, log_to_driver=False)
        print(f"model={cfg.model.name} batch_size={cfg.batch_size} shards={shards} "
              f"shard_size={shard_size} workers={workers} cpus_per_worker={cfg.ray.cpus_per_worker} "
              f"storage={'S3 (moto)' if with_s3 else 'local'} cores={os.cpu_count()}", flush=True)
        t0 = time.perf_counter()
        result = measure_run(cfg, interval=interval)
        wall = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    r, mb = result.report, 1024 * 1024
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; wall {wall:.0f} s "
          f"(start-up {r.get('startup_seconds', 0):.1f} s)")
    print("\n| shards | images | shards/s (steady) | driver CPU/shard | generators busy | pipeline overhead/shard "
          "| driver RSS 25/50/100% | RSS growth/shard (2nd half) | heap 25/50/100% | heap growth/shard "
          "| manifest rows | verify |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rss = "/".join(f"{result.at_fraction('rss', f) / mb:.0f}" for f in (0.25, 0.5, 1.0))
    heap = "/".join(f"{result.at_fraction('heap', f) / mb:.1f}" for f in (0.25, 0.5, 1.0))
    print(f"| {r['generated_shards']} | {r['generated_images']} | {result.shards_per_second:.3f} "
          f"| {result.driver_cpu_per_shard() * 1000:.2f} ms | {result.generators_busy():.1%} "
          f"| {result.overhead_per_shard() * 1000:.0f} ms "
          f"| {rss} MiB | {result.growth_per_shard('rss') / 1024:.2f} KiB | {heap} MiB "
          f"| {result.growth_per_shard('heap') / 1024:.2f} KiB | {result.manifest_rows} "
          f"({result.manifest_unique} distinct) | {'OK' if result.verify_ok else f'{len(result.verify_problems)} problems'} |")
