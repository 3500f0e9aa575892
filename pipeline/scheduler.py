"""Distributing shards over the Ray actor pool: readiness, retries on another actor, dead actors replaced.

The driver (pipeline/driver.py) hands ShardScheduler a factory of actors (pipeline/worker.py's ShardWorker)
and the shards to make; the scheduler keeps every ready actor busy and reports each committed shard back.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Iterable

from accel.api import ArgenError
from pipeline.lease import LeaseLost
from pipeline.plan import ShardTask
from pipeline.redaction import redact
from pipeline.sinks import backoff_s

log = logging.getLogger("argen.pipeline")


class ShardFailed(RuntimeError):
    pass


def workers_record(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"worker": i["worker"], "device": i["device"],
             **({"compile_seconds": i["compile_seconds"]} if "compile_seconds" in i else {})} for i in infos]


class ShardScheduler:
    """Keeps `depth` shards in flight on each actor, retries failures on another actor, replaces dead actors.

    `make_actor(index)` returns a Ray actor handle with `load()` and `run_shard(task, attempt)`. Shards go only
    to actors whose load() has returned: an actor Ray cannot place (a cluster short of GPUs, a replacement for
    a lost node) never holds shards; it joins when it is placed. No actor ready for start_timeout_s ends the
    run with an error instead of waiting for ever.
    """

    def __init__(self, make_actor: Callable[[int], Any], num_workers: int, max_attempts: int = 3, depth: int = 2,
                 on_commit: Callable[[dict[str, Any]], None] = lambda r: None,
                 on_tick: Callable[[], None] = lambda: None, poll_s: float = 1.0, start_timeout_s: float = 900.0,
                 max_backoff_s: float = 60.0):
        self.make_actor, self.num_workers = make_actor, num_workers
        self.max_attempts, self.depth = max_attempts, depth
        self.on_commit, self.on_tick, self.poll_s = on_commit, on_tick, poll_s
        self.start_timeout_s, self.max_backoff_s = start_timeout_s, max_backoff_s
        self.actors: dict[int, Any] = {}
        self.load: dict[int, int] = {}
        self.ready: set[int] = set()           # actors whose load() returned: the ones given shards
        self.loading: dict[Any, int] = {}      # load() refs of actors not ready yet -> their index
        self.next_index = 0
        self.replaced = 0
        self.failures: list[str] = []
        self.worker_infos: list[dict[str, Any]] = []

    def _spawn(self) -> int:
        index = self.next_index
        self.next_index += 1
        self.actors[index] = self.make_actor(index)
        self.load[index] = 0
        self.loading[self.actors[index].load.remote()] = index
        return index

    def _retire(self, index: int) -> None:
        import ray

        handle = self.actors.pop(index, None)
        self.load.pop(index, None)
        self.ready.discard(index)
        for ref in [r for r, i in self.loading.items() if i == index]:
            del self.loading[ref]
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:
                pass

    def _loaded(self, ref: Any) -> None:
        """An actor's load() returned: it is ready, or it failed (a bad config fails the run; a crash retires it)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        index = self.loading.pop(ref)
        try:
            self.worker_infos.append(ray.get(ref))
            self.ready.add(index)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ArgenError):
                raise ArgenError(str(cause)) from None
            raise ShardFailed(f"a worker could not load the generator: {cause or e}") from None
        except RayActorError as e:
            if not self.ready:
                raise ShardFailed(f"a worker died while loading the generator: {e}") from None
            log.warning("worker w%d died while loading the generator: %s", index, e)
            self._retire(index)

    def _no_room(self) -> ShardFailed:
        return ShardFailed(f"no worker became ready within {self.start_timeout_s:.0f} s (ray.start_timeout_s): Ray "
                           f"could not place the actors (ray.gpus_per_worker / ray.cpus_per_worker more than the "
                           f"cluster has free?) or loading the generator took longer; check `ray status`, lower "
                           f"ray.num_workers, or raise ray.start_timeout_s")

    def start(self) -> list[dict[str, Any]]:
        """Start the pool and wait until every actor has loaded its generator (errors surface here). Once one is
        ready after t seconds, the others get until 2t + 5 s: actors load in parallel, so a placed one is done
        by then, and one that Ray cannot place (no free GPU) must not hold up the run; late ones join while it
        runs. No actor ready within start_timeout_s fails the run."""
        import ray

        for _ in range(self.num_workers):
            self._spawn()
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout_s
        while self.loading and time.monotonic() < deadline:
            done, _ = ray.wait(list(self.loading), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in done:
                was_ready = bool(self.ready)
                self._loaded(ref)
                if self.ready and not was_ready:
                    first = time.monotonic() - t0
                    deadline = min(deadline, t0 + 2 * first + 5.0)
        if not self.ready:
            raise self._no_room()
        if self.loading:
            log.warning("%d of %d workers not ready after %.0f s, the first after %.0f s (the cluster has no room "
                        "for them yet?); going on with %d, the others join when placed", len(self.loading),
                        self.num_workers, time.monotonic() - t0, first, len(self.ready))
        return self.worker_infos

    def _pick(self, pending: deque[ShardTask], index: int, avoid: dict[int, set[int]]) -> ShardTask | None:
        for task in pending:
            bad = avoid.get(task.shard, set())
            if index not in bad or all(a in bad for a in self.ready):
                pending.remove(task)
                return task
        return None

    def run(self, tasks: Iterable[ShardTask]) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        pending = deque(tasks)
        attempts: dict[int, int] = {}
        avoid: dict[int, set[int]] = {}
        inflight: dict[Any, tuple[ShardTask, int]] = {}
        idle_since: float | None = None  # when the last ready actor was lost
        backing_off: list[tuple[float, ShardTask]] = []  # failed shards and when they may run again

        def failed(task: ShardTask, index: int, why: str) -> None:
            why = redact(why)
            n = attempts.get(task.shard, 0) + 1
            attempts[task.shard] = n
            avoid.setdefault(task.shard, set()).add(index)
            self.failures.append(f"shard {task.shard} attempt {n - 1} on worker w{index}: {why}")
            # a failure that is the cluster's or the store's (a lost node, an outage) is often shared by the
            # next try: wait before it, longer each time
            wait = backoff_s(n - 1, cap=self.max_backoff_s, first=1.0)
            last = n >= self.max_attempts
            log.warning("shard %d failed on worker w%d (attempt %d of %d): %s%s", task.shard, index, n,
                        self.max_attempts, why, "" if last else f"; retrying in {wait:.1f} s")
            if last:
                raise ShardFailed(f"shard {task.shard} failed {n} time(s) (ray.max_attempts={self.max_attempts}); "
                                  f"last error: {why}")
            backing_off.append((time.monotonic() + wait, task))

        while pending or inflight or backing_off:
            now = time.monotonic()
            for due, task in [b for b in backing_off if b[0] <= now]:
                backing_off.remove((due, task))
                pending.appendleft(task)
            for index in sorted(self.ready):
                while self.load.get(index, self.depth) < self.depth and pending:
                    task = self._pick(pending, index, avoid)
                    if task is None:
                        break
                    ref = self.actors[index].run_shard.remote(task, attempts.get(task.shard, 0))
                    inflight[ref] = (task, index)
                    self.load[index] += 1
            if not inflight and not pending and backing_off:
                time.sleep(max(0.0, min(self.poll_s, min(d for d, _ in backing_off) - time.monotonic())))
                self.on_tick()
                continue
            if not inflight:
                if not self.loading:
                    raise ShardFailed("no worker can take the remaining shards")  # cannot happen with live actors
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.start_timeout_s:
                    raise self._no_room()
            else:
                idle_since = None
            ready, _ = ray.wait(list(inflight) + list(self.loading), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                if ref in self.loading:
                    self._loaded(ref)
                    continue
                task, index = inflight.pop(ref)
                if index in self.load:
                    self.load[index] -= 1
                try:
                    record = ray.get(ref)
                except RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, ArgenError):
                        raise ArgenError(str(cause)) from None
                    if isinstance(cause, LeaseLost):
                        raise LeaseLost(str(cause)) from None
                    failed(task, index, f"{type(cause).__name__ if cause else 'error'}: {cause or e}")
                except RayActorError:
                    if index in self.actors:
                        self._retire(index)
                        self.replaced += 1
                        if self.replaced > self.num_workers * self.max_attempts:
                            raise ShardFailed(f"{self.replaced} workers died; giving up (see the Ray logs)")
                        new = self._spawn()
                        log.warning("worker w%d died; started w%d in its place", index, new)
                    failed(task, index, "the worker process died")
                else:
                    self.on_commit(record)
            self.on_tick()

    def shutdown(self) -> None:
        for index in list(self.actors):
            self._retire(index)
