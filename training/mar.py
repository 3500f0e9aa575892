"""Training of the MAR toy models: `argen train-toy mar-tokenizer` and `argen train-toy mar`.

mar-tokenizer  mar_kl_toy: MAR's KL autoencoder layout (accel/tokenizers/kl_vae.py) with one downsampling,
               so a 32x32 ToyShapes image is a 16x16 grid of 4-channel latents. Loss: L1 + L2 reconstruction
               plus a small KL term (no perceptual or GAN loss). Afterwards the latent scale factor is measured
               as 1 / std of posterior samples over training images (MAR's 0.2325 for kl16 is the same
               statistic over ImageNet; no mean shift) and stored in the weights' metadata.
mar            mar_toy: MAR (accel/families/mar) with fewer, narrower layers, on the scaled latents of the
               trained tokenizer, with the official objective (see `mar_loss`); then the diffusion head alone
               is refined near t = 999, where the sampler needs it precise (see `refine_head`).

Both write <name>.safetensors (float32) and <name>.json (training config, data-set seed, measured time and
machine load, results) into accel/toy/weights/ (or out_dir=...). Options are key=value; see each function.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from accel.checkpoints import CACHE_DIR
from training.common import (EMA, WEIGHTS_DIR, LoadMonitor, TrainingState, as_float, batches, bf16_autocast,
                             cosine_schedule, data_version, init_record, load_average, load_init, skip_batches,
                             stopping_step, toy_images, write_weights)

TOKENIZER = "mar_kl_toy"
MODEL = "mar_toy"


def _weights_dir(opts: dict[str, str]) -> Path:

    return Path(opts.get("out_dir", WEIGHTS_DIR))


# ------------------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------------------
def _kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(0, 1)) per latent element."""
    var = std * std
    return 0.5 * (mean * mean + var - 1.0 - torch.log(var))


@torch.no_grad()
def tokenizer_psnr(vae: torch.nn.Module, images: np.ndarray) -> float:
    """Held-out PSNR (dB, images in [0, 1]) of decode(posterior mean)."""

    vae.eval()
    se, n = 0.0, 0
    for i in range(0, len(images), 250):
        x = as_float(images[i:i + 250])
        mean, _ = vae.encode(x)
        rec = vae.decode(mean).clamp(-1, 1)
        se += F.mse_loss((rec + 1) / 2, (x + 1) / 2, reduction="sum").item()
        n += x.numel()
    return 10 * math.log10(1.0 / (se / n))


@torch.no_grad()
def latent_statistics(vae: torch.nn.Module, images: np.ndarray, seed: int) -> dict[str, float]:
    """Mean and std over every element of posterior samples (as MAR's 0.2325 = 1 / std for kl16)."""

    vae.eval()
    g = torch.Generator().manual_seed(seed)
    total, total_sq, n, means = 0.0, 0.0, 0, []
    for i in range(0, len(images), 250):
        mean, std = vae.encode(as_float(images[i:i + 250]))
        z = (mean + std * torch.randn(mean.shape, generator=g)).double()
        total += z.sum().item()
        total_sq += (z * z).sum().item()
        n += z.numel()
        means.append(mean.double().mean(dim=(0, 2, 3)))
    mu = total / n
    std = math.sqrt(total_sq / n - mu * mu)
    return {"latent_mean": mu, "latent_std": std, "latent_scale": 1.0 / std,
            "channel_means": [round(float(m), 4) for m in torch.stack(means).mean(0)]}


def train_mar_tokenizer(opts: dict[str, str]) -> None:
    """argen train-toy mar-tokenizer [seed=0 train=30000 steps=1500 batch=32 lr=1e-3 kl_weight=1e-4 threads=2]

    kl_weight multiplies the KL per latent element, next to per-pixel L1 + L2 (in LDM's units, where both are
    summed over the image, this is kl_weight / 3 since a 32x32x3 image has 3x as many values as its latents).
    """
    from accel.api import seeded_init
    from accel.tokenizers import build_tokenizer

    torch.set_num_threads(int(opts.get("threads", 2)))
    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 30000))
    steps, batch, lr = int(opts.get("steps", 1500)), int(opts.get("batch", 32)), float(opts.get("lr", 1e-3))
    kl_weight = float(opts.get("kl_weight", 1e-4))
    bf16 = bf16_autocast(opts)
    version = data_version(opts)
    xs, _ = toy_images(seed, n_train, version)
    xt, _ = toy_images(seed + 1, 1000, version)
    with seeded_init(seed):
        vae = build_tokenizer(TOKENIZER).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.5, 0.9), weight_decay=0.0)  # LDM's AE betas
    sched = cosine_schedule(opt, steps, warmup=100)
    x_all = as_float(xs)
    torch.manual_seed(seed)
    load = LoadMonitor()
    t0 = time.time()
    print(f"mar-tokenizer: {sum(p.numel() for p in vae.parameters())} parameters, {steps} steps of {batch}, "
          f"threads {torch.get_num_threads()}, load average {load_average()}", flush=True)
    for step, idx in enumerate(batches(n_train, batch, steps, seed)):
        x = x_all[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mean, std = vae.encode(x)
            z = mean + std * torch.randn_like(std)  # a posterior sample, as in LDM training
            rec = vae.decode(z).float()
        rec_loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean()
        kl = _kl(mean.float(), std.float()).mean()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            load.sample()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            psnr = tokenizer_psnr(vae, xt)
            vae.train()
            print(f"step {step + 1}/{steps} rec {rec_loss.item():.4f} kl {kl.item():.3f} held-out PSNR {psnr:.2f} dB "
                  f"({time.time() - t0:.0f} s, load {load_average()})", flush=True)
    train_seconds = time.time() - t0
    vae.eval().requires_grad_(False)
    psnr = tokenizer_psnr(vae, xt)
    stats = latent_statistics(vae, xs[:5000], seed)
    print(f"held-out PSNR {psnr:.2f} dB; latents: mean {stats['latent_mean']:.4f}, std {stats['latent_std']:.4f} "
          f"-> latent scale factor {stats['latent_scale']:.4f}", flush=True)
    record = {"what": TOKENIZER, "dataset": "ToyShapes", "data_version": version, "train_seed": seed, "train_samples": n_train,
              "test_seed": seed + 1, "test_samples": len(xt), "steps": steps, "batch": batch, "lr": lr,
              "optimizer": "AdamW betas (0.5, 0.9), cosine schedule, 100 warmup steps",
              "loss": "mean L1 + mean L2 reconstruction + kl_weight * mean KL per latent element",
              "kl_weight": kl_weight, "bf16_autocast": bf16, "held_out_psnr_db": round(psnr, 2),
              "latent_scale": stats["latent_scale"], "latent_std": stats["latent_std"],
              "latent_mean": stats["latent_mean"], "latent_channel_means": stats["channel_means"],
              "latent_stats_samples": 5000, "train_seconds": round(train_seconds, 1),
              "torch_threads": torch.get_num_threads(), "machine_load": load.summary(),
              "command": "argen train-toy mar-tokenizer " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(vae, TOKENIZER, record, _weights_dir(opts), {"latent_scale": repr(stats["latent_scale"])})
    print(f"wrote {path} ({train_seconds:.0f} s)")


# ------------------------------------------------------------------------------------------------------------
# MAR: the training objective
# ------------------------------------------------------------------------------------------------------------
class TrainingDiffusion:
    """The head's training loss: MAR's `create_diffusion(timestep_respacing="", noise_schedule="cosine")`, i.e.
    1000 steps of the cosine schedule, epsilon prediction, learned-range variance, loss = MSE(eps) + VLB
    (the VLB term trains the variance only: it sees the eps prediction detached; in bits; at t = 0 the
    discretised Gaussian NLL), each averaged over the token's channels. Constants in float64, used as float32."""

    def __init__(self, num_steps: int = 1000):
        from accel.families.mar.diffusion import cosine_betas

        betas = cosine_betas(num_steps)
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a, dtype=np.float64)).float()

        self.num_steps = num_steps
        self.sqrt_ac, self.sqrt_1m_ac = f32(np.sqrt(ac)), f32(np.sqrt(1.0 - ac))
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = f32(np.sqrt(1.0 / ac)), f32(np.sqrt(1.0 / ac - 1.0))
        self.coef1 = f32(betas * np.sqrt(ac_prev) / (1.0 - ac))
        self.coef2 = f32((1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac))
        self.min_log = f32(np.log(np.append(post_var[1], post_var[1:])))  # posterior log variance, clipped at t=0
        self.max_log = f32(np.log(betas))

    @staticmethod
    def _normal_kl(mean1, logvar1, mean2, logvar2):
        return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))

    @staticmethod
    def _discretized_gaussian_nll(x, means, log_scales):
        """-log p(x) of a Gaussian discretised into 255 bins on [-1, 1] (IDDPM's decoder term; nats)."""
        def cdf(v):
            return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))

        inv_std = torch.exp(-log_scales)
        cdf_plus, cdf_min = cdf(inv_std * (x - means + 1.0 / 255)), cdf(inv_std * (x - means - 1.0 / 255))
        log_probs = torch.where(x < -0.999, torch.log(cdf_plus.clamp(min=1e-12)),
                                torch.where(x > 0.999, torch.log((1.0 - cdf_min).clamp(min=1e-12)),
                                            torch.log((cdf_plus - cdf_min).clamp(min=1e-12))))
        return -log_probs

    def loss(self, net: torch.nn.Module, x0: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row loss [N] for targets x0 [N, C] given conditions z [N, D]; one timestep per row (uniform
        unless `t` [N] is given)."""
        n, C = x0.shape
        if t is None:
            t = torch.randint(0, self.num_steps, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        col = lambda a: a[t].unsqueeze(1)  # noqa: E731
        x_t = col(self.sqrt_ac) * x0 + col(self.sqrt_1m_ac) * noise
        out = net(x_t, t, z).float()
        eps, var_values = out[:, :C], out[:, C:]
        mse = ((noise - eps) ** 2).mean(dim=1)
        # VLB for the variance, with the mean from the detached eps (IDDPM's "frozen_out")
        frac = (var_values + 1) / 2
        model_log_var = frac * col(self.max_log) + (1 - frac) * col(self.min_log)
        pred_x0 = col(self.sqrt_recip_ac) * x_t - col(self.sqrt_recipm1_ac) * eps.detach()
        model_mean = col(self.coef1) * pred_x0 + col(self.coef2) * x_t
        true_mean = col(self.coef1) * x0 + col(self.coef2) * x_t
        kl = self._normal_kl(true_mean, col(self.min_log), model_mean, model_log_var).mean(dim=1) / math.log(2.0)
        nll = self._discretized_gaussian_nll(x0, model_mean, 0.5 * model_log_var).mean(dim=1) / math.log(2.0)
        return mse + torch.where(t == 0, nll, kl)


class MaskRatio:
    """MAR's mask ratio: truncnorm on [mask_ratio_min, 1], centred at 1.0 with std 0.25 (scipy's truncnorm
    with a = (min - 1) / 0.25, b = 0), drawn by inverse CDF from a seeded torch generator."""

    def __init__(self, minimum: float = 0.7, std: float = 0.25):
        self.minimum, self.std = minimum, std
        self.a = (minimum - 1.0) / std
        self.cdf_a = 0.5 * (1 + math.erf(self.a / math.sqrt(2)))

    def sample(self, generator: torch.Generator) -> float:
        u = self.cdf_a + (0.5 - self.cdf_a) * torch.rand((), generator=generator, dtype=torch.float64)
        return float(1.0 + self.std * torch.special.ndtri(u))


def masked_conditions(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, mask_ratio: MaskRatio,
                      generator: torch.Generator, label_drop_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """MAR's training forward up to the head (upstream MAR.forward) for tokens [B, 256, C] (scaled latents) and
    labels [B]: one random order per sample; the first ceil(256 * ratio) tokens of it masked, one ratio per
    batch; each class embedding replaced by the learned `fake_latent` with probability 0.1 (for CFG); the
    encoder sees the buffer and the visible tokens, the decoder gives every token its condition z. Returns
    (z, tokens) of the masked tokens, [N, D] and [N, C]."""
    B, L, _ = tokens.shape
    orders = torch.rand(B, L, generator=generator).argsort(dim=1)
    n_masked = int(math.ceil(L * mask_ratio.sample(generator)))
    mask = torch.zeros(B, L, dtype=torch.bool).scatter(1, orders[:, :n_masked], True)
    class_embedding = model.class_emb(labels)
    drop = (torch.rand(B, generator=generator) < label_drop_prob).unsqueeze(1)
    class_embedding = torch.where(drop, model.fake_latent.to(class_embedding.dtype), class_embedding)
    x, positions = model.forward_mae_encoder(tokens, mask, class_embedding)
    return model.forward_mae_decoder(x, positions)[mask], tokens[mask]


def mar_loss(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, diffusion: TrainingDiffusion,
             mask_ratio: MaskRatio, generator: torch.Generator, diffusion_batch_mul: int = 4,
             label_drop_prob: float = 0.1) -> torch.Tensor:
    """MAR's training loss: `masked_conditions`, then the head's diffusion loss on the masked tokens, each
    repeated `diffusion_batch_mul` times with its own timestep and noise. (Upstream evaluates the head on every
    token and weights the loss by the mask, which is the same loss.)"""
    z, target = masked_conditions(model, tokens, labels, mask_ratio, generator, label_drop_prob)
    return diffusion.loss(model.diffloss.net, target.repeat(diffusion_batch_mul, 1),
                          z.repeat(diffusion_batch_mul, 1), generator).mean()


# ------------------------------------------------------------------------------------------------------------
# MAR: data and training loop
# ------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def toy_latents(vae: torch.nn.Module, weights: Path, seed: int, count: int, version: str
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) [count, C, 16, 16] of ToyShapes(seed, version)[:count], cached by the tokenizer's hash
    (MAR's main_cache.py caches the same moments; training samples the posterior at every use)."""

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    path = CACHE_DIR / "toy" / f"latents_{TOKENIZER}_{digest}_{version}_seed{seed}_n{count}.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["mean"], d["std"]
    xs, _ = toy_images(seed, count, version)
    vae.eval()
    means, stds = [], []
    for i in range(0, count, 250):
        m, s = vae.encode(as_float(xs[i:i + 250]))
        means.append(m)
        stds.append(s)
    mean, std = torch.cat(means), torch.cat(stds)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mean": mean, "std": std}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return mean, std


def _patchify(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> tokens [B, h*w, C] (MAR.patchify with patch size 1)."""
    B, C, h, w = latents.shape
    return latents.permute(0, 2, 3, 1).reshape(B, h * w, C)


def posterior_tokens(mean: torch.Tensor, std: torch.Tensor, latent_scale: float, generator: torch.Generator
                     ) -> torch.Tensor:
    """A fresh sample of the cached posteriors [B, C, h, w], scaled, as tokens [B, h*w, C] (MAR's training
    samples the posterior at every use)."""
    return _patchify((mean + std * torch.randn(mean.shape, generator=generator)) * latent_scale)


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, diffusion: TrainingDiffusion,
                  mask_ratio: MaskRatio, seed: int, repeats: int = 4) -> float:
    """The training loss on held-out latents with fixed masks, timesteps and noise (comparable across models)."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    losses = [mar_loss(model, tokens, labels, diffusion, mask_ratio, g, label_drop_prob=0.0).item()
              for _ in range(repeats)]
    return float(np.mean(losses))


@torch.no_grad()
def head_check(model: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, diffusion: TrainingDiffusion,
               seed: int, num_sampling_steps: str = "100") -> dict[str, Any]:
    """Whether the head is precise enough for the respaced DDPM chain the sampler runs.

    Near t = 999 the cosine schedule leaves sqrt(alpha_bar) ~ 5e-5 of the data in x_t, so the x0 the chain
    derives from eps carries the eps error times ~20,000; the first respaced step keeps about 1.4% of it
    (sqrt(alpha_bar) at t = 989). So a head must predict eps there almost exactly; where it does not (an
    undertrained toy head), the chain's next inputs are far larger than any it was trained on and it
    diverges. Reported: the eps MSE at a few timesteps on held-out tokens (half of each image masked,
    conditions from the transformer), and the RMS error and RMS size of the tokens that the sampler's chain
    produces from those conditions (real tokens have RMS ~1)."""
    from accel.families.mar.diffusion import RespacedDDPM

    model.eval()
    g = torch.Generator().manual_seed(seed)
    B, L, C = tokens.shape
    orders = torch.rand(B, L, generator=g).argsort(dim=1)
    mask = torch.zeros(B, L, dtype=torch.bool).scatter(1, orders[:, :L // 2], True)
    x, positions = model.forward_mae_encoder(tokens, mask, model.class_emb(labels))
    z, target = model.forward_mae_decoder(x, positions)[mask], tokens[mask]
    eps_mse = {}
    for t in (999, 990, 900, 500, 100):
        noise = torch.randn(target.shape, generator=g)
        x_t = diffusion.sqrt_ac[t] * target + diffusion.sqrt_1m_ac[t] * noise
        out = model.diffloss.net(x_t, torch.full((len(target),), t), z)
        eps_mse[str(t)] = float(((out[:, :C] - noise) ** 2).mean())
    ddpm = RespacedDDPM(num_sampling_steps)
    chain_noise = torch.randn(ddpm.num_timesteps + 1, len(target), C, generator=g)
    sampled = model.diffloss.sample(z, chain_noise, ddpm)
    return {"eps_mse_at_t": eps_mse, "chain_steps": num_sampling_steps,
            "chain_token_rms_error": float(((sampled - target) ** 2).mean().sqrt()),
            "chain_token_rms": float((sampled ** 2).mean().sqrt()), "target_token_rms": float((target ** 2).mean().sqrt())}


@torch.no_grad()
def cached_conditions(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor,
                      latent_scale: float, count: int, generator: torch.Generator, chunk: int = 100
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions z [N, D], target tokens [N, C]) of the masked tokens of the first `count` training images,
    masked and label-dropped as in training (`masked_conditions`), from the frozen transformer."""
    mask_ratio = MaskRatio()
    model.eval()
    zs, targets = [], []
    for start in range(0, count, chunk):
        idx = torch.arange(start, min(count, start + chunk))
        tokens = posterior_tokens(mean[idx], std[idx], latent_scale, generator)
        z, target = masked_conditions(model, tokens, labels[idx], mask_ratio, generator)
        zs.append(z)
        targets.append(target)
    return torch.cat(zs), torch.cat(targets)


def refine_head(model: torch.nn.Module, conditions: torch.Tensor, targets: torch.Tensor, diffusion: TrainingDiffusion,
                generator: torch.Generator, steps: int, batch: int = 8192, lr: float = 3e-4, near_from: int = 990,
                near_share: float = 0.5, near_weight: float = 30.0, log_every: int = 500) -> dict[str, Any]:
    """Train the diffusion head alone, in float32, on conditions of the frozen transformer; a share
    `near_share` of the timesteps drawn from [near_from, 999] and their loss weighted `near_weight` times.
    Returns what it did (settings and seconds) for the training record.

    Why: the sampler's first step (t = 999, sqrt(alpha_bar) ~ 5e-5) multiplies the head's eps error by ~300
    into x_989 (see head_check), so a head must predict eps there to ~1e-3 RMS, far finer than the loss at
    other timesteps asks for. MAR's released heads get there from hundreds of epochs with uniform timesteps; a
    toy head trained for minutes (in bf16) stops at ~2e-2 and its chains diverge. Same objective as training
    (MSE + VLB, diffusion.loss); only which timesteps are seen, and how much they count, differ."""
    net = model.diffloss.net
    net.train().requires_grad_(True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=min(50, steps))
    t0, running = time.time(), []
    for step in range(steps):
        rows = torch.randint(0, len(targets), (batch,), generator=generator)
        t = torch.randint(0, diffusion.num_steps, (batch,), generator=generator)
        near = torch.rand(batch, generator=generator) < near_share
        t = torch.where(near, torch.randint(near_from, diffusion.num_steps, (batch,), generator=generator), t)
        per_row = diffusion.loss(net, targets[rows], conditions[rows], generator, t=t)
        loss = (per_row * torch.where(near, near_weight, 1.0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"head step {step + 1}/{steps} weighted loss {np.mean(running):.4f} "
                  f"({time.time() - t0:.0f} s, load {load_average()})", flush=True)
            running = []
    net.eval().requires_grad_(False)
    return {"steps": steps, "batch": batch, "lr": lr, "near_T_timesteps": [near_from, diffusion.num_steps - 1],
            "near_T_share": near_share, "near_T_loss_weight": near_weight, "precision": "float32",
            "token_conditions": len(targets), "seconds": round(time.time() - t0, 1)}


def train_mar(opts: dict[str, str]) -> None:
    """argen train-toy mar [seed=0 train=20000 steps=2000 batch=64 lr=1e-3 ema=0.995 threads=2 bf16=auto warmup=100
                         init=PATH head_steps=6000 ...]

    The official objective (mar_loss) with upstream's optimiser settings except the learning rate and its
    schedule (AdamW betas (0.9, 0.95), weight decay 0.02 on weights but not on biases, norms, embeddings or the
    head, grad clip 3.0; here lr 1e-3 with 100 warmup steps and a cosine decay, for a run of minutes instead of
    800 epochs). Dropout is 0 (upstream: 0.1 in attention and projections), since the run sees each image about
    once. An EMA of the weights is kept; the weights with the lower held-out loss are kept (upstream samples
    with the EMA).

    Then the head alone is refined (`refine_head`: head_steps=6000 head_batch=8192 head_lr=3e-4 head_images=3000)
    so that the sampler's first steps near t = 999 work; head_check before and after goes into the record.
    steps=0 with init=PATH refines the head of earlier weights only.
    """
    from accel.api import seeded_init
    from accel.checkpoints import load_strict, read_checkpoint
    from accel.families.mar import CONFIGS, build_model
    from accel.tokenizers import build_tokenizer

    torch.set_num_threads(int(opts.get("threads", 2)))
    seed, n_train = int(opts.get("seed", 0)), int(opts.get("train", 20000))
    steps, batch, lr = int(opts.get("steps", 2000)), int(opts.get("batch", 64)), float(opts.get("lr", 1e-3))
    ema_decay, batch_mul = float(opts.get("ema", 0.995)), int(opts.get("diffusion_batch_mul", 4))
    bf16 = bf16_autocast(opts)
    out_dir = _weights_dir(opts)
    cfg = CONFIGS[MODEL]
    vae_path = out_dir / f"{cfg['tokenizer']}.safetensors"
    if not vae_path.exists():
        raise SystemExit(f"{vae_path} does not exist: run `argen train-toy mar-tokenizer` first")
    from accel.families.mar import stored_latent_scale

    latent_scale = stored_latent_scale(str(vae_path))
    if latent_scale is None:
        raise SystemExit(f"{vae_path} has no latent_scale metadata: retrain it with `argen train-toy mar-tokenizer`")
    load = LoadMonitor()
    t_start = time.time()
    vae = build_tokenizer(cfg["tokenizer"])
    load_strict(vae, read_checkpoint(vae_path), f"toy tokenizer {vae_path}")
    version = data_version(opts)
    mean, std = toy_latents(vae, vae_path, seed, n_train, version)
    n_held = int(opts.get("held_out", 500))  # held-out images for choosing weights or EMA
    hmean, hstd = toy_latents(vae, vae_path, seed + 1, n_held, version)
    _, labels = toy_images(seed, n_train, version)
    _, hlabels = toy_images(seed + 1, n_held, version)
    labels, hlabels = torch.from_numpy(labels).long(), torch.from_numpy(hlabels).long()
    g_hold = torch.Generator().manual_seed(seed + 1)
    held_tokens = posterior_tokens(hmean, hstd, latent_scale, g_hold)
    encode_seconds = time.time() - t_start
    print(f"mar: latents of {n_train} images ready ({encode_seconds:.0f} s); latent scale {latent_scale:.4f}", flush=True)

    with seeded_init(seed):
        model = build_model(MODEL)
    init = opts.get("init")  # continue from earlier mar_toy weights with a fresh schedule
    load_init(model, init, MODEL)
    model.train()
    ema = EMA(model, ema_decay)
    no_decay = lambda n, p: p.ndim < 2 or n.startswith("diffloss") or "pos_embed" in n or n in (  # noqa: E731
        "class_emb.weight", "fake_latent", "mask_token")
    decay = [p for n, p in model.named_parameters() if not no_decay(n, p)]
    rest = [p for n, p in model.named_parameters() if no_decay(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.02}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = int(opts.get("warmup", 100))
    sched = cosine_schedule(opt, steps, warmup=warmup)
    diffusion, mask_ratio = TrainingDiffusion(), MaskRatio()
    g = torch.Generator().manual_seed(seed)
    state = TrainingState(opts.get("state"), int(opts.get("save_every", 100)))
    start = state.restore(model, opt, sched, ema, {"draws": g})
    order = batches(n_train, batch, steps, seed)
    skip_batches(order, start)
    stop_at = stopping_step(opts)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"mar: {MODEL} {n_params} parameters, {steps} steps of {batch}, diffusion batch x{batch_mul}, "
          f"threads {torch.get_num_threads()}, load average {load_average()}", flush=True)
    t0, running = time.time(), []
    for step, idx in enumerate(order, start=start):
        tokens = posterior_tokens(mean[idx], std[idx], latent_scale, g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = mar_loss(model, tokens, labels[idx], diffusion, mask_ratio, g, batch_mul)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        sched.step()
        ema.update(model, step)
        running.append(loss.item())
        if (step + 1) % 25 == 0:
            load.sample()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps} loss {np.mean(running):.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"({time.time() - t0:.0f} s, load {load_average()})", flush=True)
            running = []
        state.maybe_save(step + 1, steps, model, opt, sched, ema, {"draws": g})
        if step + 1 == stop_at and step + 1 < steps:
            print(f"stopped after step {step + 1} (stop_at); the state is in {state.path}: run again to go on")
            return
    train_seconds = time.time() - t0
    model.eval().requires_grad_(False)
    loss_raw = held_out_loss(model, held_tokens, hlabels, diffusion, mask_ratio, seed + 2)
    raw = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(ema.shadow[k])
    loss_ema = held_out_loss(model, held_tokens, hlabels, diffusion, mask_ratio, seed + 2)
    use_ema = loss_ema <= loss_raw
    if not use_ema:
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(raw[k])
    print(f"held-out loss: weights {loss_raw:.4f}, EMA {loss_ema:.4f} -> saving {'EMA' if use_ema else 'weights'}",
          flush=True)
    head_refinement = None
    head_steps = int(opts.get("head_steps", 6000))
    if head_steps > 0:
        before = head_check(model, held_tokens[:64], hlabels[:64], diffusion, seed + 3)
        print(f"head check before refinement: eps MSE at t {before['eps_mse_at_t']}, chain token RMS "
              f"{before['chain_token_rms']:.3g}", flush=True)
        g_head = torch.Generator().manual_seed(seed + 4)
        head_images = int(opts.get("head_images", 3000))
        conditions, targets = cached_conditions(model, mean, std, labels, latent_scale, head_images, g_head)
        head_batch, head_lr = int(opts.get("head_batch", 8192)), float(opts.get("head_lr", 3e-4))
        refined = refine_head(model, conditions, targets, diffusion, g_head, head_steps, head_batch, head_lr)
        loss_refined = held_out_loss(model, held_tokens, hlabels, diffusion, mask_ratio, seed + 2)
        print(f"held-out loss after head refinement {loss_refined:.4f}", flush=True)
        head_refinement = {**refined, "images": head_images, "held_out_loss_after": round(loss_refined, 4),
                           "head_check_before": before}
    check = head_check(model, held_tokens[:64], hlabels[:64], diffusion, seed + 3)
    print(f"head check: eps MSE at t {check['eps_mse_at_t']}; the 100-step chain from held-out conditions gives "
          f"tokens of RMS {check['chain_token_rms']:.3g} (real {check['target_token_rms']:.3g}), RMS error "
          f"{check['chain_token_rms_error']:.3g}" + ("  <- diverges: the head is not precise enough near t = 999"
                                                      if check["chain_token_rms"] > 3 * check["target_token_rms"] else ""),
          flush=True)
    total_seconds = time.time() - t_start
    record = {"what": MODEL, "tokenizer": cfg["tokenizer"], "dataset": "ToyShapes", "data_version": version,
              "train_seed": seed,
              "train_samples": n_train, "held_out_seed": seed + 1, "held_out_samples": n_held, "steps": steps,
              "batch": batch, "lr": lr, "parameters": n_params,
              "objective": "MAR: random order, mask ratio truncnorm [0.7, 1] centred 1.0 std 0.25, diffusion loss "
                           "(cosine 1000 steps, eps + learned range variance, MSE + VLB) on masked tokens",
              "diffusion_batch_mul": batch_mul, "label_dropout": 0.1, "mask_ratio_min": 0.7,
              "optimizer": "AdamW betas (0.9, 0.95), weight decay 0.02 (not biases/norms/embeddings/head), "
                           "grad clip 3.0, 100 warmup steps, cosine decay to 5%", "dropout": 0.0,
              "ema_decay": ema_decay, "saved": "ema" if use_ema else "weights",
              "held_out_loss": {"weights": round(loss_raw, 4), "ema": round(loss_ema, 4)},
              "latent_scale": latent_scale, "bf16_autocast": bf16, "torch_threads": torch.get_num_threads(),
              "encode_seconds": round(encode_seconds, 1), "train_seconds": round(train_seconds, 1),
              "total_seconds": round(total_seconds, 1), "machine_load": load.summary(), "warmup_steps": warmup,
              "init": init_record(init), "head_refinement": head_refinement, "head_check": check,
              "command": "argen train-toy mar " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(model, MODEL, record, out_dir, {"latent_scale": repr(latent_scale)})
    print(f"wrote {path} ({total_seconds:.0f} s in all)")
