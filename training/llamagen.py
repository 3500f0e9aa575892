"""Training of the LlamaGen toy models (`argen train-toy llamagen-tokenizer | llamagen | llamagen-draft`).

  llamagen-tokenizer  llamagen_vq_toy: the official VQ network with downsampling 2 (32x32 images ->
                      16x16 codes), a 1024 x 8 L2-normalised codebook. Loss: the release's reconstruction
                      loss (l2) + codebook loss + 0.25 x commitment loss; no GAN, no perceptual loss.
                      Codes unused for `restart_every` steps are restarted on random encoder outputs.
                      Held-out PSNR (ToyShapes seed+1) is printed while training and recorded.
  llamagen            llamagen_toy: next-token cross-entropy on the tokenizer's codes of ToyShapes(seed),
                      the official class-conditioning layout (one class token; the label is replaced by
                      the null class `num_classes` with probability 0.1, for classifier-free guidance).
  llamagen-draft      llamagen_toy_draft: the same recipe for the smaller drafter.

Every command takes key=value options (steps, batch, lr, seed, train, threads, out_dir ...), writes
accel/toy/weights/<name>.safetensors (fp16 storage; loading converts to fp32) and <name>.json with the
training config, the data-set seed, the measured training time and the machine load while training.

threads (default 2, the machine's cores): torch's intra-op threads. On a machine shared with other
training jobs (load average above the core count) threads=1 is faster: every multi-threaded op waits for
its slowest thread. The committed weights were trained with threads=1 for that reason (see the records).
The generators train under bf16 autocast on CPUs with native bf16 (fp32 master weights), as the release trains in
bf16; elsewhere in fp32 (bf16=auto, training/common.py bf16_autocast).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import (EMA, WEIGHTS_DIR, LoadMonitor, TrainingState, as_float, batches, bf16_autocast,
                             cosine_schedule, data_version, half_precision, init_record, load_init, probe_weights,
                             skip_batches, stopping_step, toy_codes, toy_images, write_weights)

TOKENIZER = "llamagen_vq_toy"


def _threads(opts: dict[str, str]) -> int:
    n = int(opts.get("threads", 2))
    if n < 1:
        raise SystemExit(f"threads={n}: pass a number of torch threads >= 1 (this machine has {os.cpu_count()} cores)")
    torch.set_num_threads(n)
    return n


def _command(what: str, opts: dict[str, str]) -> str:
    return f"argen train-toy {what} " + " ".join(f"{k}={v}" for k, v in opts.items())


# ----------------------------------------------------------------------------------------------
# tokenizer
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def tokenizer_psnr(vq: torch.nn.Module, images: np.ndarray) -> tuple[float, int]:
    """Held-out PSNR (dB, images in [0, 1]) of encode -> quantise -> decode, and the codes used."""
    was_training = vq.training
    vq.eval()
    se, used = 0.0, torch.zeros(vq.quantize.n_e, dtype=torch.bool)
    for i in range(0, len(images), 250):
        x = as_float(images[i:i + 250])
        codes = vq.encode_to_codes(x)
        used[codes.flatten()] = True
        rec = vq.decode_code(codes, (len(x), vq.quantize.e_dim, x.shape[2] // vq.downsample,
                                     x.shape[3] // vq.downsample)).clamp(-1, 1)
        se += F.mse_loss((rec + 1) / 2, (x + 1) / 2, reduction="sum").item()
    vq.train(was_training)
    mse = se / (images.size)
    return float(10 * np.log10(1.0 / mse)), int(used.sum())


def train_tokenizer(opts: dict[str, str]) -> None:
    from accel.api import seeded_init
    from accel.tokenizers.vq import TOKENIZER_CONFIGS, build_tokenizer

    threads = _threads(opts)
    seed, n_train, n_test = int(opts.get("seed", 0)), int(opts.get("train", 30000)), int(opts.get("test", 1000))
    steps, batch, lr = int(opts.get("steps", 1500)), int(opts.get("batch", 32)), float(opts.get("lr", 1e-3))
    beta, restart_every = float(opts.get("beta", 0.25)), int(opts.get("restart_every", 100))
    out_dir = Path(opts.get("out_dir", WEIGHTS_DIR))
    t_start = time.time()
    version = data_version(opts)
    xs, _ = toy_images(seed, n_train, version)
    xt, _ = toy_images(seed + 1, n_test, version)
    with seeded_init(seed):
        vq = build_tokenizer(TOKENIZER)
        n = vq.quantize.n_e  # the official codebook init: uniform(-1/n, 1/n), then unit rows
        vq.quantize.embedding.weight.data = F.normalize(torch.empty(n, vq.quantize.e_dim).uniform_(-1 / n, 1 / n), dim=-1)
    vq.train().requires_grad_(True)
    q = vq.quantize
    opt = torch.optim.AdamW(vq.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=100)
    x_all = as_float(xs)
    usage = torch.zeros(n)
    load = LoadMonitor()
    restarted_total = 0
    g = torch.Generator().manual_seed(seed + 17)
    t0 = time.time()
    for step, idx in enumerate(batches(n_train, batch, steps, seed)):
        x = x_all[idx]
        z = vq.quant_conv(vq.encoder(x))
        zq, codebook_loss, commit_loss, codes = q.quantize_train(z, beta)
        rec = vq.decode(zq)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + codebook_loss + commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            usage += torch.bincount(codes.flatten(), minlength=n).float()
            if (step + 1) % restart_every == 0 and step + 1 < steps:
                dead = (usage == 0).nonzero().flatten()
                if len(dead):  # restart on random (normalised) encoder outputs of this batch
                    pool = F.normalize(z.detach().permute(0, 2, 3, 1).reshape(-1, q.e_dim), dim=-1)
                    pick = torch.randint(len(pool), (len(dead),), generator=g)
                    q.embedding.weight[dead] = pool[pick] + 0.01 * torch.randn(len(dead), q.e_dim, generator=g)
                    restarted_total += len(dead)
                usage.zero_()
            if (step + 1) % 20 == 0:
                load.sample()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            psnr, used = tokenizer_psnr(vq, xt)
            print(f"step {step + 1}/{steps} rec {rec_loss.item():.4f} codebook {codebook_loss.item():.4f} "
                  f"commit {commit_loss.item():.4f} held-out PSNR {psnr:.2f} dB, codes used {used}/{n}, "
                  f"restarted so far {restarted_total} ({time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f})",
                  flush=True)
    vq.eval().requires_grad_(False)
    psnr, used = tokenizer_psnr(vq, xt)
    cfg = TOKENIZER_CONFIGS[TOKENIZER]
    record = {"what": TOKENIZER, "architecture": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
              "dataset": "ToyShapes", "data_version": version, "train_seed": seed, "train_samples": n_train,
              "test_seed": seed + 1,
              "test_samples": n_test, "steps": steps, "batch": batch, "lr": lr, "betas": [0.9, 0.95],
              "schedule": "cosine, 100 warmup steps", "loss": f"mse + codebook + {beta} x commitment (l2-normalised codes)",
              "dead_code_restart_every": restart_every, "codes_restarted": restarted_total,
              "held_out_psnr_db": round(psnr, 2), "held_out_codes_used": used, "threads": threads,
              "train_seconds": round(time.time() - t0, 1), "total_seconds": round(time.time() - t_start, 1),
              "machine_load": load.summary(), "storage": "fp16", "command": _command("llamagen-tokenizer", opts)}
    path = write_weights(half_precision(vq), TOKENIZER, record, out_dir)
    print(f"wrote {path} (held-out PSNR {psnr:.2f} dB, {used}/{n} codes used)")


# ----------------------------------------------------------------------------------------------
# generators
# ----------------------------------------------------------------------------------------------
def load_toy_tokenizer(out_dir: Path):
    from accel.tokenizers.vq import load_tokenizer

    path = out_dir / f"{TOKENIZER}.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: run `argen train-toy llamagen-tokenizer` first")
    return load_tokenizer(str(path), device=torch.device("cpu"), name=TOKENIZER), path


def _train_generator(name: str, what: str, opts: dict[str, str], defaults: dict[str, float]) -> None:
    from accel.api import seeded_init
    from accel.families.llamagen import Transformer, get_config

    threads = _threads(opts)
    cfg = get_config(name)
    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch = int(opts.get("steps", defaults["steps"])), int(opts.get("batch", defaults["batch"]))
    lr, wd = float(opts.get("lr", defaults["lr"])), float(opts.get("weight_decay", 0.05))
    label_dropout = float(opts.get("label_dropout", cfg.args.class_dropout_prob))
    bf16 = bf16_autocast(opts)
    version, ema_decay = data_version(opts), float(opts.get("ema", 0.999))
    probe_every, probe_samples = int(opts.get("probe_every", 0)), int(opts.get("probe_samples", 200))
    stop_at = stopping_step(opts)
    out_dir = Path(opts.get("out_dir", WEIGHTS_DIR))
    t_start = time.time()
    vq, vq_path = load_toy_tokenizer(out_dir)
    codes = toy_codes(TOKENIZER, lambda x: [vq.encode_to_codes(x)], seed, n_train, vq_path, version)[0].long()
    encode_seconds = time.time() - t_start
    _, labels = toy_images(seed, n_train, version)
    labels = torch.from_numpy(labels).long()
    if codes.shape != (n_train, cfg.args.block_size):
        raise SystemExit(f"codes of shape {tuple(codes.shape)}; {name} needs [{n_train}, {cfg.args.block_size}]")
    with seeded_init(seed):
        model = Transformer(cfg.args)
        model.init_weights(zero_output=True)  # the official init: normal(0, 0.02), output head zeroed
    init = opts.get("init")
    load_init(model, init, name)
    model.train()
    # the release's optimizer groups: weight decay on >= 2-D weights only
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, steps, warmup=int(opts.get("warmup", 200)))
    ema = EMA(model, ema_decay) if ema_decay > 0 else None
    state = TrainingState(opts.get("state"), int(opts.get("save_every", 100)))
    start = state.restore(model, opt, sched, ema)
    order = batches(n_train, batch, steps, seed)
    skip_batches(order, start)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    V, T = cfg.args.vocab_size, cfg.args.cls_token_num
    # held-out loss: codes of 500 images of ToyShapes(seed+1)
    held_codes = toy_codes(TOKENIZER, lambda x: [vq.encode_to_codes(x)], seed + 1, 500, vq_path, version)[0].long()
    _, held_labels = toy_images(seed + 1, 500, version)
    load = LoadMonitor()
    probes: list[dict] = []
    t0 = time.time()
    ema_loss = None
    for step, idx in enumerate(order, start=start):
        z = codes[idx]
        y = labels[idx]
        drop = torch.rand(len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)) < label_dropout
        y = torch.where(drop, torch.full_like(y, cfg.args.num_classes), y)
        with amp():
            logits = model(z[:, :-1], y)[:, T - 1:]          # position i predicts image token i
        loss = F.cross_entropy(logits.float().reshape(-1, V), z.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(model, step)
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        done = step + 1
        if done % 20 == 0:
            load.sample()
        if done % 200 == 0 or done == steps:
            print(f"step {done}/{steps} loss {ema_loss:.3f} ({time.time() - t0:.0f} s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
        state.maybe_save(done, steps, model, opt, sched, ema)
        if probe_every and name == "llamagen_toy" and (done % probe_every == 0 or done == steps):
            weights = ema.weights(model) if ema is not None else model.state_dict()
            probes.append({"step": done, **probe_weights(name, weights, out_dir, vq_path, probe_samples, version)})
            print(f"probe at step {done}: {probes[-1]}", flush=True)
            model.train()
        if done == stop_at and done < steps:
            print(f"stopped after step {done} (stop_at); the state is in {state.path}: run again to go on")
            return
    model.eval().requires_grad_(False)
    if ema is not None:
        model.load_state_dict(ema.weights(model))
    held = held_out_loss(model, held_codes, torch.from_numpy(held_labels).long())
    print(f"held-out next-token loss {held:.3f} nats (ToyShapes {version} seed {seed + 1}, 500 images)")
    a = cfg.args
    record = {"what": name, "tokenizer": TOKENIZER,
              "architecture": {"n_layer": a.n_layer, "n_head": a.n_head, "dim": a.dim, "multiple_of": a.multiple_of,
                               "vocab_size": a.vocab_size, "num_classes": a.num_classes, "block_size": a.block_size,
                               "parameters": sum(p.numel() for p in model.parameters())},
              "dataset": "ToyShapes", "data_version": version, "train_seed": seed, "train_samples": n_train,
              "steps": steps, "batch": batch,
              "lr": lr, "betas": [0.9, 0.95], "weight_decay": wd, "grad_clip": 1.0, "ema": ema_decay,
              "schedule": f"cosine, {int(opts.get('warmup', 200))} warmup steps", "label_dropout": label_dropout,
              "bf16_autocast": bf16, "dropout": "none (token/residual/ffn dropout of the release off: the toy runs underfit)",
              "final_train_loss_ema": round(ema_loss, 4), "held_out_loss": round(held, 4), "held_out_seed": seed + 1,
              "threads": threads, "encode_seconds": round(encode_seconds, 1),
              "train_seconds_this_process": round(time.time() - t0, 1), "resumed_at_step": start, "probes": probes,
              "init": init_record(init), "total_seconds": round(time.time() - t_start, 1),
              "machine_load": load.summary(), "storage": "fp16", "command": _command(what, opts)}
    path = write_weights(half_precision(model), name, record, out_dir)
    print(f"wrote {path}")


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> float:
    T, V = model.cls_token_num, model.vocab_size
    total = 0.0
    for i in range(0, len(codes), 100):
        z = codes[i:i + 100]
        logits = model(z[:, :-1], labels[i:i + 100])[:, T - 1:]
        total += F.cross_entropy(logits.reshape(-1, V), z.reshape(-1), reduction="sum").item()
    return total / codes.numel()


def train_llamagen(opts: dict[str, str]) -> None:
    _train_generator("llamagen_toy", "llamagen", opts, {"steps": 2000, "batch": 32, "lr": 1e-3})


def train_llamagen_draft(opts: dict[str, str]) -> None:
    _train_generator("llamagen_toy_draft", "llamagen-draft", opts, {"steps": 2000, "batch": 32, "lr": 2e-3})


# ----------------------------------------------------------------------------------------------
# EAGLE drafter
# ----------------------------------------------------------------------------------------------
def train_llamagen_eagle(opts: dict[str, str]) -> None:
    """argen train-toy llamagen-eagle [steps=3000 batch=32 lr=1e-3 noise=0.2 p_weight=0.1 seed=0 train=30000
    threads=2 data=<the target's> target=PATH state=PATH save_every=100 stop_at=STEP out_dir=...]

    llamagen_toy_eagle: LANTERN's EAGLE drafter (accel/methods/eagle.py) for llamagen_toy, trained as the
    release trains it (entrypoints/train_drafter): on the frozen target's own features of ToyShapes codes,
    teacher-forced, with 10% of the labels replaced by the null class so that the drafter also learns the
    unconditional CFG row. Loss = smooth-L1 regression of the next feature + p_weight x the cross-entropy
    between the target head's distribution of the true next feature and of the predicted one; uniform noise
    of std `noise` x 512 / sequence length on the input features. The target is out_dir/llamagen_toy.safetensors
    when there is one, else the committed llamagen_toy (or target=PATH); the data version is the target's."""
    import json

    from accel.api import seeded_init
    from accel.families.llamagen import load_model
    from accel.methods.eagle import build_eagle_head

    threads = _threads(opts)
    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 3000)), int(opts.get("batch", 32)), float(opts.get("lr", 1e-3))
    noise_std, p_weight = float(opts.get("noise", 0.2)), float(opts.get("p_weight", 0.1))
    stop_at = stopping_step(opts)
    out_dir = Path(opts.get("out_dir", WEIGHTS_DIR))
    target_path = Path(opts.get("target") or (out_dir / "llamagen_toy.safetensors"))
    if not target_path.exists():
        target_path = WEIGHTS_DIR / "llamagen_toy.safetensors"
    beside = target_path.with_suffix(".json")
    target_version = json.loads(beside.read_text()).get("data_version", "v1") if beside.exists() else "v1"
    version = opts.get("data") or target_version
    if version != target_version:
        raise SystemExit(f"data={version} but the target {target_path} was trained on ToyShapes {target_version}; "
                         f"a drafter learns its target's features on the target's data")
    version = data_version({"data": version})
    t_start = time.time()
    target = load_model("llamagen_toy", str(target_path), random_init=False, device=torch.device("cpu"))
    target.requires_grad_(False)
    vq, vq_path = load_toy_tokenizer(out_dir)
    codes = toy_codes(TOKENIZER, lambda x: [vq.encode_to_codes(x)], seed, n_train, vq_path, version)[0].long()
    _, labels = toy_images(seed, n_train, version)
    labels = torch.from_numpy(labels).long()
    held_codes = toy_codes(TOKENIZER, lambda x: [vq.encode_to_codes(x)], seed + 1, 200, vq_path, version)[0].long()
    held_labels = torch.from_numpy(toy_images(seed + 1, 200, version)[1]).long()
    with seeded_init(seed):
        head = build_eagle_head(target)
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=int(opts.get("warmup", 100)))
    state = TrainingState(opts.get("state"), int(opts.get("save_every", 100)))
    start = state.restore(head, opt, sched, None)
    order = batches(n_train, batch, steps, seed)
    skip_batches(order, start)
    null = target.num_classes
    load = LoadMonitor()
    t0, running = time.time(), []
    for step, idx in enumerate(order, start=start):
        y = labels[idx]
        drop = torch.rand(len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)) < 0.1
        y = torch.where(drop, torch.full_like(y, null), y)
        feats_in, tokens, feats_next = eagle_pairs(target, codes[idx], y)
        g = torch.Generator().manual_seed(seed * 7_919 + step)
        amplitude = noise_std * 512 / feats_in.shape[1]
        feats_in = feats_in + (torch.rand(feats_in.shape, generator=g) - 0.5) * amplitude
        pred = head(feats_in, tokens)
        loss = eagle_loss(target, pred, feats_next, p_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, 0.5)
        opt.step()
        sched.step()
        running.append(loss.item())
        done = step + 1
        if done % 20 == 0:
            load.sample()
        if done % 100 == 0 or done == steps:
            print(f"step {done}/{steps} loss {np.mean(running):.4f} ({time.time() - t0:.0f} s)", flush=True)
            running = []
        state.maybe_save(done, steps, head, opt, sched, None)
        if done == stop_at and done < steps:
            print(f"stopped after step {done} (stop_at); the state is in {state.path}: run again to go on")
            return
    head.eval().requires_grad_(False)
    agreement = eagle_agreement(target, head, held_codes, held_labels)
    print(f"held-out: the drafter's top-1 token = the target's in {agreement:.3f} of positions "
          f"(ToyShapes {version} seed {seed + 1}, 200 images)")
    record = {"what": "llamagen_toy_eagle", "target": target_path.name, "tokenizer": TOKENIZER,
              "dataset": "ToyShapes", "data_version": version, "train_seed": seed, "train_samples": n_train,
              "steps": steps, "batch": batch, "lr": lr, "betas": [0.9, 0.95], "grad_clip_value": 0.5,
              "schedule": f"cosine, {int(opts.get('warmup', 100))} warmup steps", "label_dropout": 0.1,
              "loss": f"smooth-L1 next feature + {p_weight} x soft cross-entropy through the target's head",
              "input_noise": f"uniform, std {noise_std} x 512 / sequence length",
              "held_out_top1_agreement": round(agreement, 4), "threads": threads,
              "train_seconds_this_process": round(time.time() - t0, 1), "resumed_at_step": start,
              "total_seconds": round(time.time() - t_start, 1), "machine_load": load.summary(), "storage": "fp16",
              "command": _command("llamagen-eagle", opts)}
    path = write_weights(half_precision(head), "llamagen_toy_eagle", record, out_dir)
    print(f"wrote {path}")


@torch.no_grad()
def eagle_pairs(target: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced drafter inputs and targets of a c2i batch: drafter index s pairs the target's feature
    h_s with the token of base position s + 1 (image token z_s) and learns h_{s+1}."""
    _, h = target(codes[:, :-1], labels, features=True)     # h_0 .. h_{N-1}: condition position, z_0 .. z_{N-2}
    return h[:, :-1], codes[:, :-1], h[:, 1:]


def eagle_loss(target: torch.nn.Module, pred: torch.Tensor, feats_next: torch.Tensor, p_weight: float) -> torch.Tensor:
    v_loss = F.smooth_l1_loss(pred, feats_next, reduction="none").mean(-1).mean()
    with torch.no_grad():
        p_target = F.softmax(target.output(feats_next).float(), dim=-1)
    p_loss = -(p_target * F.log_softmax(target.output(pred).float(), dim=-1)).sum(-1).mean()
    return v_loss + p_weight * p_loss


@torch.no_grad()
def eagle_agreement(target: torch.nn.Module, head: torch.nn.Module, codes: torch.Tensor, labels: torch.Tensor) -> float:
    """How often the drafter's most likely next token is the target's, teacher-forced on held-out codes."""
    same = total = 0
    for i in range(0, len(codes), 50):
        feats_in, tokens, feats_next = eagle_pairs(target, codes[i:i + 50], labels[i:i + 50])
        a = target.output(head(feats_in, tokens)).argmax(-1)
        b = target.output(feats_next).argmax(-1)
        same += int((a == b).sum())
        total += a.numel()
    return same / total
