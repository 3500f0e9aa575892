"""`argen train-toy <what> [key=value ...]`: train argen's small models on the ToyShapes data set.

Each entry point runs on this machine's CPU within about 30 minutes and writes a safetensors file plus
a JSON record of its training config and data-set seed into accel/toy/weights/ (or out_dir=...).

  argen train-toy classifier        the toy classifier (toy FID features, class-consistency)
  argen train-toy var-tokenizer     var_vqvae_toy: multi-scale VQVAE, downsampling 2
  argen train-toy var               var_toy: VAR on the toy tokenizer's codes (needs var-tokenizer)
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from accel.api import ArgenError
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


def train_classifier(opts: dict[str, str]) -> None:
    from accel.toy.classifier import ToyClassifier

    seed, n_train, n_test = int(opts.get("seed", 0)), int(opts.get("train", 30000)), int(opts.get("test", 5000))
    epochs, batch, lr = int(opts.get("epochs", 3)), int(opts.get("batch", 128)), float(opts.get("lr", 2e-3))
    torch.manual_seed(seed)
    xs, ys = toy_images(seed, n_train)
    xt, yt = toy_images(seed + 1, n_test)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    x_all, y_all = as_float(xs), torch.from_numpy(ys).long()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train)
        for i in range(n_train // batch):
            idx = perm[i * batch:(i + 1) * batch]
            x = x_all[idx]
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x, x.flip(-1))  # the classes are mirror-symmetric
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate_classifier(model, xt, yt)
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} held-out accuracy {acc:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    record = {"what": "toy classifier", "dataset": "ToyShapes", "train_seed": seed, "train_samples": n_train,
              "test_seed": seed + 1, "test_samples": n_test, "epochs": epochs, "batch": batch, "lr": lr,
              "held_out_accuracy": acc, "train_seconds": round(time.time() - t0, 1),
              "command": "argen train-toy classifier " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(model.eval(), "toy_classifier", record, Path(opts.get("out_dir", WEIGHTS_DIR)))
    print(f"wrote {path} (held-out accuracy {acc:.4f})")


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 500):
        correct += (model(as_float(images[i:i + 500])).argmax(1).numpy() == labels[i:i + 500]).sum()
    return float(correct) / len(images)


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


def train_var_tokenizer(opts: dict[str, str]) -> None:
    from accel.api import seeded_init
    from accel.tokenizers.msvq import build_tokenizer

    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 3000)), int(opts.get("batch", 64)), float(opts.get("lr", 1e-3))
    xs, _ = toy_images(seed, n_train)
    xt, _ = toy_images(seed + 1, 1000)
    with seeded_init(seed):
        vae = build_tokenizer("var_vqvae_toy").train().requires_grad_(True)
    q = vae.quantize
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=100)
    x_all = as_float(xs)
    usage = torch.zeros(q.vocab_size)
    t0 = time.time()
    for step, idx in enumerate(batches(n_train, batch, steps, seed)):
        x = x_all[idx]
        f = vae.quant_conv(vae.encoder(x))
        f_hat, vq_loss, codes = q(f)
        rec = vae.decoder(vae.post_quant_conv(f_hat))
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for c in codes:
                usage += torch.bincount(c.flatten(), minlength=q.vocab_size).float()
            if (step + 1) % 100 == 0:  # restart codes unused for 100 steps on random latent vectors
                dead = (usage == 0).nonzero().flatten()
                if len(dead):
                    pool = f.detach().permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    q.embedding.weight[dead] = pool[torch.randint(len(pool), (len(dead),))]
                usage.zero_()
            if (step + 1) % 250 == 0 or step + 1 == steps:
                psnr = _psnr(vae, xt)
                print(f"step {step + 1}/{steps} loss {loss.item():.4f} vq {vq_loss.item():.4f} "
                      f"held-out PSNR {psnr:.2f} dB, dead codes restarted {len(dead) if (step + 1) % 100 == 0 else 0} "
                      f"({time.time() - t0:.0f} s)", flush=True)
                vae.train()
    vae.eval().requires_grad_(False)
    record = {"what": "var_vqvae_toy", "dataset": "ToyShapes", "train_seed": seed, "train_samples": n_train,
              "steps": steps, "batch": batch, "lr": lr, "held_out_psnr_db": round(psnr, 2),
              "train_seconds": round(time.time() - t0, 1),
              "command": "argen train-toy var-tokenizer " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(vae, "var_vqvae_toy", record, Path(opts.get("out_dir", WEIGHTS_DIR)))
    print(f"wrote {path}")


@torch.no_grad()
def _psnr(vae: torch.nn.Module, images: np.ndarray) -> float:
    vae.eval()
    x = as_float(images)
    rec = vae.fhat_to_img(vae.quantize(vae.quant_conv(vae.encoder(x)))[0])
    mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
    return 10 * np.log10(1 / mse)


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


def train_var(opts: dict[str, str]) -> None:
    """argen train-toy var [seed=0 train=30000 steps=1600 batch=32 lr=1e-3 bf16=1 threads=N init=PATH]

    init=PATH continues from earlier var_toy weights (a new warm-up and cosine schedule over `steps`); the
    record then carries the earlier run's record, so the total training is on file."""
    from accel.api import seeded_init
    from accel.checkpoints import read_checkpoint
    from accel.models.var import CONFIGS, VAR
    from accel.tokenizers.msvq import build_tokenizer

    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 1600)), int(opts.get("batch", 32)), float(opts.get("lr", 1e-3))
    # bf16 autocast (fp32 master weights, fp32 loss): 1.6-1.8x faster steps on a CPU with AVX512-BF16
    bf16 = opts.get("bf16", "1") not in ("0", "false", "False")
    torch.set_num_threads(int(opts.get("threads", torch.get_num_threads())))
    cfg = CONFIGS["var_toy"]
    out_dir = Path(opts.get("out_dir", WEIGHTS_DIR))
    vae_path = out_dir / f"{cfg.tokenizer}.safetensors"
    if not vae_path.exists():
        raise SystemExit(f"{vae_path} does not exist: run `argen train-toy var-tokenizer` first")
    vae = build_tokenizer(cfg.tokenizer)
    vae.load_state_dict(read_checkpoint(vae_path))
    codes = toy_codes(cfg.tokenizer, vae.img_to_idxBl, seed, n_train, vae_path)
    _, labels = toy_images(seed, n_train)
    labels = torch.from_numpy(labels).long()
    with seeded_init(seed):
        model = VAR(cfg)
        model.init_random_weights(gates="training")
    init = opts.get("init")  # continue from earlier weights (e.g. the committed var_toy) with a fresh schedule
    load_init(model, init, "var_toy")
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos" not in n and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos" not in n and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, steps, warmup=200)
    t0 = time.time()
    for step, idx in enumerate(batches(n_train, batch, steps, seed)):
        idx_Bl = [c[idx].long() for c in codes]
        with torch.no_grad():
            x_in = vae.quantize.idxBl_to_var_input(idx_Bl)
        y = labels[idx]
        y = torch.where(torch.rand(len(y)) < 0.1, torch.full_like(y, cfg.num_classes), y)  # CFG: drop 10%
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(y, x_in)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), torch.cat(idx_Bl, dim=1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval().requires_grad_(False)
    record = {"what": "var_toy", "tokenizer": cfg.tokenizer, "dataset": "ToyShapes", "train_seed": seed,
              "train_samples": n_train, "steps": steps, "batch": batch, "lr": lr, "label_dropout": 0.1,
              "bf16_autocast": bf16, "threads": torch.get_num_threads(),
              "final_loss": round(loss.item(), 4), "train_seconds": round(time.time() - t0, 1),
              "init": init_record(init),
              "command": "argen train-toy var " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(half_precision(model), "var_toy", {**record, "storage": "fp16"}, out_dir)
    print(f"wrote {path}")


ENTRY_POINTS: dict[str, Callable[[dict[str, str]], None]] = {
    "classifier": train_classifier,
    "var-tokenizer": train_var_tokenizer,
    "var": train_var,
    "llamagen-tokenizer": lambda opts: importlib.import_module("jobs.toy_llamagen").train_tokenizer(opts),
    "llamagen": lambda opts: importlib.import_module("jobs.toy_llamagen").train_llamagen(opts),
    "llamagen-draft": lambda opts: importlib.import_module("jobs.toy_llamagen").train_llamagen_draft(opts),
    "mar-tokenizer": lambda opts: importlib.import_module("jobs.toy_mar").train_mar_tokenizer(opts),
    "mar": lambda opts: importlib.import_module("jobs.toy_mar").train_mar(opts),
}


# the key=value options each entry point reads (a misspelt one would otherwise be ignored after a long run)
_GENERATOR = ("seed", "train", "steps", "batch", "lr", "out_dir", "threads")
OPTION_KEYS = {
    "classifier": ("seed", "train", "test", "epochs", "batch", "lr", "out_dir"),
    "var-tokenizer": ("seed", "train", "steps", "batch", "lr", "out_dir"),
    "var": (*_GENERATOR, "bf16", "init"),
    "llamagen-tokenizer": (*_GENERATOR, "test", "beta", "restart_every"),
    "llamagen": (*_GENERATOR, "bf16", "label_dropout", "warmup", "weight_decay"),
    "llamagen-draft": (*_GENERATOR, "bf16", "label_dropout", "warmup", "weight_decay"),
    "mar-tokenizer": (*_GENERATOR, "bf16", "kl_weight"),
    "mar": (*_GENERATOR, "bf16", "init", "warmup", "ema", "diffusion_batch_mul", "held_out", "head_steps",
            "head_batch", "head_images", "head_lr"),
}


def parse_options(what: str, args: list[str]) -> dict[str, str]:
    """key=value arguments of `argen train-toy <what>`, checked against OPTION_KEYS[what]."""
    opts = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ArgenError(f"argen train-toy {what}: {arg!r} is not key=value; pass e.g. steps=1500")
        if key not in OPTION_KEYS[what]:
            raise ArgenError(f"argen train-toy {what}: unknown option {key!r}; known: {', '.join(sorted(OPTION_KEYS[what]))}")
        opts[key] = value
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRY_POINTS:
        print(f"usage: argen train-toy <{'|'.join(ENTRY_POINTS)}> [key=value ...]", file=sys.stderr)
        return 2
    what = argv.pop(0)
    try:
        opts = parse_options(what, argv)
    except ArgenError as e:
        print(f"argen train-toy: error: {e}", file=sys.stderr)
        return 2
    ENTRY_POINTS[what](opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
