"""Progress at batch granularity: workers report each batch to a ProgressBoard actor; the driver's bar shows
committed images plus the images of shards still being generated, so rate and ETA move from the first batch.
"""
from __future__ import annotations

import sys
from typing import Any


class ProgressBoard:
    """Images generated so far by each shard attempt in flight (a Ray actor; workers call update() without
    waiting for it)."""

    def __init__(self) -> None:
        self.done: dict[tuple[int, int], int] = {}

    def update(self, shard: int, attempt: int, images: int) -> None:
        key = (int(shard), int(attempt))
        self.done[key] = max(int(images), self.done.get(key, 0))

    def forget(self, shard: int) -> None:
        for key in [k for k in self.done if k[0] == shard]:
            del self.done[key]

    def partial(self) -> dict[int, int]:
        """Per shard, the images of its latest attempt."""
        latest: dict[int, tuple[int, int]] = {}
        for (shard, attempt), images in self.done.items():
            if shard not in latest or attempt > latest[shard][0]:
                latest[shard] = (attempt, images)
        return {shard: images for shard, (_, images) in latest.items()}


class Progress:
    """tqdm bar over images: committed + in flight, shards done, images/s, ETA."""

    def __init__(self, total_images: int, total_shards: int, done_shards: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total_images, unit="img", desc="generate", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)
        self.total_shards, self.done_shards = total_shards, done_shards
        self.committed_images = 0
        self.committed: set[int] = set()
        self.in_flight: dict[int, int] = {}
        self.position = 0  # images shown: never goes back (a failed attempt's batches stay counted until passed)
        self._post()

    def _post(self) -> None:
        self.bar.set_postfix_str(f"shards {self.done_shards}/{self.total_shards}", refresh=False)

    def _move(self) -> None:
        position = self.committed_images + sum(n for s, n in self.in_flight.items() if s not in self.committed)
        if position > self.position:
            self.bar.update(position - self.position)
            self.position = position
        else:
            self.bar.refresh()

    def shard_done(self, shard: int, count: int) -> None:
        self.done_shards += 1
        self.committed.add(int(shard))
        self.in_flight.pop(int(shard), None)
        self.committed_images += count
        self._post()
        self._move()

    def batches(self, partial: dict[int, int]) -> None:
        """The workers' latest report: images generated so far per shard in flight."""
        self.in_flight = dict(partial)
        self._move()

    def close(self) -> None:
        self.bar.close()


def board_reader(board: Any, timeout_s: float = 0.5):
    """A function returning the board's partial counts, or None when the actor does not answer in time (the
    bar then waits for the next tick)."""
    import ray

    def read() -> dict[int, int] | None:
        try:
            return ray.get(board.partial.remote(), timeout=timeout_s)
        except Exception:
            return None

    return read
