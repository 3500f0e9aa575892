"""What every toy model's training shares: the ToyShapes images, batches and schedules, the CPU-load monitor,
writing weights (fp16 safetensors + a JSON record) and starting from earlier weights (init=)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from accel.checkpoints import CACHE_DIR, read_checkpoint, save_safetensors
from accel.toy.data import ToyShapes

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "accel" / "toy" / "weights"


def toy_images(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [count, 32, 32, 3] and labels of ToyShapes(seed), cached on disk after the first call."""
    path = CACHE_DIR / "toy" / f"toyshapes_seed{seed}_n{count}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["images"], f["labels"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rendering is many tiny ops: one thread is fastest
    try:
        ds = ToyShapes(seed=seed, length=count)
        x, y = ds.batch(0, count)
    finally:
        torch.set_num_threads(threads)
    from accel.api import to_uint8

    images, labels = to_uint8(x), y.numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), images=images, labels=labels)
    path.with_suffix(".tmp.npz").replace(path)
    return images, labels


def as_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [-1, 1] [N, 3, H, W]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def half_precision(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp16 storage of the float weights, to keep each committed file small (loading converts to fp32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def load_average() -> list[float]:
    """The machine's 1, 5 and 15-minute load averages, rounded (records and progress lines)."""
    return [round(x, 2) for x in os.getloadavg()]


class LoadMonitor:
    """The machine's 1-minute load average, sampled while training runs (other jobs share this CPU)."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        s = self.samples or [os.getloadavg()[0]]
        return {"cpu_count": os.cpu_count(), "load_avg_1min_mean": round(float(np.mean(s)), 2),
                "load_avg_1min_max": round(float(np.max(s)), 2),
                "load_avg_at_end": load_average()}


def write_weights(module: torch.nn.Module | dict[str, torch.Tensor], name: str, record: dict[str, Any], out_dir: Path,
                  metadata: dict[str, str] | None = None) -> Path:
    """<name>.safetensors (safetensors metadata: the name plus `metadata`) and <name>.json (the record, plus
    the machine it ran on)."""
    record = {**record, "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                    "load_average_at_end": load_average()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.safetensors"
    save_safetensors(module, path, metadata={"name": name, **(metadata or {})})
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def batches(n: int, batch: int, steps: int, seed: int):
    """Indices of `steps` random batches over n samples, epoch by epoch."""
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos:pos + batch]
        pos += batch


def cosine_schedule(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, steps - warmup)))) * 0.95 + 0.05

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def toy_codes(tokenizer_name: str, encode: Callable[[torch.Tensor], list[torch.Tensor]], seed: int, count: int,
              weights: Path) -> list[torch.Tensor]:
    """Code indices of ToyShapes(seed)[:count] under a trained tokenizer, cached by the weights' hash."""
    import hashlib

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = CACHE_DIR / "toy" / f"codes_{tokenizer_name}_{digest}_seed{seed}_n{count}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    xs, _ = toy_images(seed, count)
    parts = []
    for i in range(0, count, 500):
        parts.append(encode(as_float(xs[i:i + 500])))
    codes = [torch.cat([p[s] for p in parts]).to(torch.int16) for s in range(len(parts[0]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(codes, path)
    return codes


def load_init(model: torch.nn.Module, init: str | None, what: str) -> None:
    """init=PATH: start from earlier weights of the same model (fp16 toy storage back to fp32), strictly."""
    if init:
        from accel.checkpoints import load_strict

        state = {k: v.float() if v.is_floating_point() else v for k, v in read_checkpoint(init).items()}
        load_strict(model, state, f"{what} init {init}")


def init_record(init: str | None) -> dict[str, Any] | None:
    """What a continued run started from: the file, and the record written beside it if there is one."""
    if not init:
        return None
    beside = Path(init).with_suffix(".json")
    earlier = json.loads(beside.read_text()) if beside.exists() else None
    return {"from": Path(init).name, "earlier_record": earlier}
