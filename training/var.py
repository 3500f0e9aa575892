"""`argen train-toy var-tokenizer | var`: var_vqvae_toy (multi-scale VQVAE, downsampling 2) and var_toy."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import (EMA, WEIGHTS_DIR, TrainingState, as_float, batches, bf16_autocast, cosine_schedule,
                             data_version, half_precision, init_record, load_init, probe_weights, skip_batches,
                             stopping_step, toy_codes, toy_images, write_weights)


def train_var_tokenizer(opts: dict[str, str]) -> None:
    from accel.api import seeded_init
    from accel.tokenizers.msvq import build_tokenizer

    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 3000)), int(opts.get("batch", 64)), float(opts.get("lr", 1e-3))
    version = data_version(opts)
    xs, _ = toy_images(seed, n_train, version)
    xt, _ = toy_images(seed + 1, 1000, version)
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
    record = {"what": "var_vqvae_toy", "dataset": "ToyShapes", "data_version": version, "train_seed": seed, "train_samples": n_train,
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


def train_var(opts: dict[str, str]) -> None:
    """argen train-toy var [seed=0 train=30000 steps=1600 batch=32 lr=1e-3 bf16=auto threads=N data=v2 ema=0.999
    init=PATH state=PATH save_every=100 stop_at=STEP probe_every=0 probe_samples=200]

    init=PATH starts from earlier var_toy weights (a new warm-up and cosine schedule over `steps`); the record
    then carries the earlier run's record, so the total training is on file. state=PATH keeps a resumable
    state there (see TrainingState); stop_at=STEP ends this sitting after that step (state saved), so a long
    schedule can be trained in pieces. probe_every=N writes the EMA weights every N steps and measures their
    class-consistency on probe_samples samples, so a long run shows when it is good enough."""
    from accel.api import seeded_init
    from accel.checkpoints import read_checkpoint
    from accel.families.var import CONFIGS, VAR
    from accel.tokenizers.msvq import build_tokenizer

    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 1600)), int(opts.get("batch", 32)), float(opts.get("lr", 1e-3))
    version, ema_decay = data_version(opts), float(opts.get("ema", 0.999))
    probe_every, probe_samples = int(opts.get("probe_every", 0)), int(opts.get("probe_samples", 200))
    stop_at = stopping_step(opts)
    bf16 = bf16_autocast(opts)
    torch.set_num_threads(int(opts.get("threads", torch.get_num_threads())))
    cfg = CONFIGS["var_toy"]
    out_dir = Path(opts.get("out_dir", WEIGHTS_DIR))
    vae_path = out_dir / f"{cfg.tokenizer}.safetensors"
    if not vae_path.exists():
        raise SystemExit(f"{vae_path} does not exist: run `argen train-toy var-tokenizer` first")
    vae = build_tokenizer(cfg.tokenizer)
    vae.load_state_dict(read_checkpoint(vae_path))
    codes = toy_codes(cfg.tokenizer, vae.img_to_idxBl, seed, n_train, vae_path, version)
    _, labels = toy_images(seed, n_train, version)
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
    ema = EMA(model, ema_decay) if ema_decay > 0 else None
    state = TrainingState(opts.get("state"), int(opts.get("save_every", 100)))
    start = state.restore(model, opt, sched, ema)
    order = batches(n_train, batch, steps, seed)
    skip_batches(order, start)
    probes: list[dict] = []
    t0 = time.time()
    for step, idx in enumerate(order, start=start):
        idx_Bl = [c[idx].long() for c in codes]
        with torch.no_grad():
            x_in = vae.quantize.idxBl_to_var_input(idx_Bl)
        y = labels[idx]
        drop = torch.rand(len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)) < 0.1
        y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)  # CFG: drop 10% of the labels
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(y, x_in)
        loss = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), torch.cat(idx_Bl, dim=1).reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step)
        done = step + 1
        if done % 100 == 0 or done == steps:
            print(f"step {done}/{steps} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        state.maybe_save(done, steps, model, opt, sched, ema)
        if probe_every and (done % probe_every == 0 or done == steps):
            weights = ema.weights(model) if ema is not None else model.state_dict()
            probe = probe_weights("var_toy", weights, out_dir, vae_path, probe_samples, version)
            probes.append({"step": done, **probe})
            print(f"probe at step {done}: {probes[-1]}", flush=True)
            model.train()
        if done == stop_at and done < steps:
            print(f"stopped after step {done} (stop_at); the state is in {state.path}: run again to go on")
            return
    model.eval().requires_grad_(False)
    weights = ema.weights(model) if ema is not None else model.state_dict()
    record = {"what": "var_toy", "tokenizer": cfg.tokenizer, "dataset": "ToyShapes", "data_version": version,
              "train_seed": seed, "train_samples": n_train, "steps": steps, "batch": batch, "lr": lr,
              "label_dropout": 0.1, "bf16_autocast": bf16, "ema": ema_decay, "threads": torch.get_num_threads(),
              "final_loss": round(loss.item(), 4), "train_seconds_this_process": round(time.time() - t0, 1),
              "resumed_at_step": start, "probes": probes, "init": init_record(init),
              "command": "argen train-toy var " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(half_precision(weights), "var_toy", {**record, "storage": "fp16"}, out_dir)
    print(f"wrote {path}")
