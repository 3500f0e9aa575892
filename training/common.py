"""What every toy model's training shares: the ToyShapes images, batches and schedules, the CPU-load monitor,
writing weights (fp16 safetensors + a JSON record), starting from earlier weights (init=), EMA weights and a
resumable training state (state=)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from accel.checkpoints import CACHE_DIR, read_checkpoint, save_safetensors
from accel.toy.data import DEFAULT_VERSION, VERSIONS, ToyShapes

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "accel" / "toy" / "weights"


def data_version(opts: dict[str, str]) -> str:
    """The ToyShapes version a training run uses (option data=, default the current version)."""
    version = opts.get("data", DEFAULT_VERSION)
    if version not in VERSIONS:
        raise SystemExit(f"data={version}: ToyShapes has versions {', '.join(sorted(VERSIONS))}; pass one of them")
    return version


def toy_images(seed: int, count: int, version: str = DEFAULT_VERSION) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [count, 32, 32, 3] and labels of ToyShapes(seed, version), cached on disk after the first call."""
    path = CACHE_DIR / "toy" / f"toyshapes_{version}_seed{seed}_n{count}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["images"], f["labels"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rendering is many tiny ops: one thread is fastest
    try:
        ds = ToyShapes(seed=seed, length=count, version=version)
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


def half_precision(weights: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 storage of the float weights (a module's, or a state dict), to keep each committed file small
    (loading converts to fp32)."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


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
        # a Python float: the schedule's state (its last lr) must load with torch.load(weights_only=True)
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, steps - warmup)))) * 0.95 + 0.05)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@torch.no_grad()
def toy_codes(tokenizer_name: str, encode: Callable[[torch.Tensor], list[torch.Tensor]], seed: int, count: int,
              weights: Path, version: str = DEFAULT_VERSION) -> list[torch.Tensor]:
    """Code indices of ToyShapes(seed, version)[:count] under a trained tokenizer, cached by the weights' hash."""
    import hashlib

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = CACHE_DIR / "toy" / f"codes_{tokenizer_name}_{digest}_{version}_seed{seed}_n{count}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    xs, _ = toy_images(seed, count, version)
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


class EMA:
    """An exponential moving average of a model's float weights: the releases sample from EMA weights, and on
    a small noisy batch it is worth more than the last step's weights. The decay ramps up as (1 + t) / (10 + t)
    so the first steps do not drag the average towards the random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay  # parameters only: buffers are not learnt (and a -inf mask would average to NaN)
        self.shadow = {k: p.detach().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach(), 1 - d)

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state_dict with the averaged parameters."""
        return {**model.state_dict(), **self.shadow}


class TrainingState:
    """A resumable run in one file: model, EMA, optimizer, schedule, the step reached and the total steps,
    saved every `every` steps (written beside, then renamed: a kill never leaves half a file). Starting again
    with the same state=PATH goes on from the saved step with the same batches; a larger steps= stretches the
    cosine schedule from there. The file holds fp32 weights and Adam moments (several times the committed
    fp16 weights), so it lives outside the repository."""

    def __init__(self, path: str | None, every: int):
        self.path = Path(path) if path else None
        self.every = max(1, every)

    def restore(self, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, ema: EMA | None,
                generators: dict[str, torch.Generator] | None = None) -> int:
        """Load the saved state if there is one (and the states of the run's random generators); the step to
        start from."""
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, weights_only=True)
        for name, g in (generators or {}).items():
            g.set_state(state["generators"][name])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = {k: state["ema"][k] for k in ema.shadow}
        print(f"resumed from {self.path} at step {state['step']} (saved with steps={state['steps']})", flush=True)
        return int(state["step"])

    def maybe_save(self, step: int, steps: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                   ema: EMA | None, generators: dict[str, torch.Generator] | None = None) -> None:
        """Save after step `step` (1-based count of steps done) when it is a multiple of `every` or the last."""
        if self.path is None or (step % self.every and step != steps):
            return
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": sched.state_dict(),
                 "ema": ema.shadow if ema is not None else None, "step": step, "steps": steps,
                 "generators": {name: g.get_state() for name, g in (generators or {}).items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def bf16_autocast(opts: dict[str, str]) -> bool:
    """bf16=auto (default) | 1 | 0: bf16 autocast (fp32 master weights) where the CPU computes bf16 natively
    (AVX512-BF16 or AMX: 1.6-1.8x faster steps); without it bf16 is emulated and 7-10x slower than fp32
    (measured on an AVX2-only AMD EPYC)."""
    value = str(opts.get("bf16", "auto")).lower()
    if value == "auto":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise SystemExit(f"bf16={value}: pass auto (native bf16 only), 1 or 0")
    return value in ("1", "true", "yes")


def stopping_step(opts: dict[str, str]) -> int | None:
    """stop_at=STEP: end this sitting after that step; it needs state=PATH, or the steps done would be lost."""
    stop_at = opts.get("stop_at")
    if stop_at is None:
        return None
    if not opts.get("state"):
        raise SystemExit(f"stop_at={stop_at} without state=PATH would lose the steps done; pass state=PATH")
    return int(stop_at)


def skip_batches(batch_iter: Any, count: int) -> None:
    """Advance a `batches` iterator past the batches a resumed run has already trained on."""
    for _ in range(count):
        next(batch_iter)


def probe_weights(name: str, weights: dict[str, torch.Tensor], out_dir: Path, tokenizer_checkpoint: Path,
                  samples: int, version: str) -> dict[str, Any]:
    """Write weights reached while training as out_dir/<name>.probe.safetensors (fp16, as committed) and
    measure their class-consistency (probe_class_consistency)."""
    path = out_dir / f"{name}.probe.safetensors"
    save_safetensors(half_precision(weights), path, metadata={"name": name})
    return probe_class_consistency(name, path, tokenizer_checkpoint, samples, version)


@torch.no_grad()
def probe_class_consistency(name: str, checkpoint: Path, tokenizer_checkpoint: Path, samples: int,
                            version: str = DEFAULT_VERSION, **options: Any) -> dict[str, Any]:
    """Class-consistency of `samples` class-balanced samples (class i mod 10, seed 10**6 + i: never a training
    seed) of weights written during training, at the model's default sampling settings, with the committed
    toy classifier; the per-class figures show which shapes the model has not learned yet."""
    from accel.api import load_generator
    from accel.toy import bundled_weights
    from accel.toy.classifier import ToyClassifier

    clf = ToyClassifier()
    clf.load_state_dict({k: v.float() for k, v in read_checkpoint(bundled_weights("toy_classifier")).items()})
    clf.eval()
    gen = load_generator(name, checkpoint=str(checkpoint), tokenizer_checkpoint=str(tokenizer_checkpoint),
                         **options)
    labels = [i % 10 for i in range(samples)]
    hits = torch.zeros(10)
    for lo in range(0, samples, 100):
        conds = labels[lo:lo + 100]
        out = gen.generate(conds, seeds=[10 ** 6 + i for i in range(lo, lo + len(conds))])
        x = torch.from_numpy(out.images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        hit = (clf(x).argmax(1) == torch.tensor(conds)).float()
        hits += torch.zeros(10).index_add_(0, torch.tensor(conds), hit)
    per_class = (hits / torch.bincount(torch.tensor(labels), minlength=10)).tolist()
    return {"samples": samples, "class_consistency": round(float(hits.sum()) / samples, 4),
            "per_class": [round(x, 3) for x in per_class], "data": version}
