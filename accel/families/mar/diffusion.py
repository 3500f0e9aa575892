"""The DDPM sampler of MAR's diffusion head: cosine noise schedule, learned variance, respacing.

MAR trains its per-token diffusion head on a 1000-step cosine schedule with epsilon prediction and a
learned interpolated variance (IDDPM's "learned range"), and samples with ancestral DDPM on a
respaced subset of the timesteps (`num_sampling_steps`, "100" by default), without clipping x0.
Only the sampling half of that code is here; training losses are not needed to generate.

Schedule constants are computed in float64 (numpy) once and used as float32, as upstream does.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

TRAIN_STEPS = 1000


def cosine_betas(num_steps: int = TRAIN_STEPS, max_beta: float = 0.999) -> np.ndarray:
    """betas that discretise alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2) on [0, 1]."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def space_timesteps(num_steps: int, section_counts: str | int | list[int]) -> list[int]:
    """The original timesteps kept when respacing `num_steps` into sections of the given counts.

    "100" keeps 100 evenly strided steps of the 1000 (rounded, first and last included);
    "10,20" splits the range in two halves with 10 and 20 steps; "ddimN" uses the fixed DDIM stride.
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        want = int(section_counts[len("ddim"):])
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == want:
                return list(range(0, num_steps, stride))
        raise ValueError(f"num_sampling_steps={section_counts!r}: no integer stride gives {want} of {num_steps} steps")
    if isinstance(section_counts, int):
        counts = [section_counts]
    elif isinstance(section_counts, str):
        counts = [int(c) for c in section_counts.split(",")]
    else:
        counts = [int(c) for c in section_counts]
    per, extra = divmod(num_steps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"num_sampling_steps={section_counts!r}: cannot take {count} steps from a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # a running sum, as upstream: k * stride rounds differently where it ends in .5
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


class RespacedDDPM:
    """Ancestral sampling p(x_{t-1} | x_t) on the respaced cosine schedule, learned-range variance."""

    def __init__(self, num_sampling_steps: str | int = "100", device: torch.device | str = "cpu"):
        base_betas = cosine_betas()
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        self.timestep_map = space_timesteps(TRAIN_STEPS, num_sampling_steps)
        # betas of the respaced chain: the same alpha_bar at the kept steps
        betas, last = [], 1.0
        for t in self.timestep_map:
            betas.append(1.0 - base_alphas_cumprod[t] / last)
            last = base_alphas_cumprod[t]
        betas = np.array(betas, dtype=np.float64)
        self.num_timesteps = len(betas)

        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # the posterior variance is 0 at t=0; its log is clipped to the value at t=1
        posterior_log_variance_clipped = (np.log(np.append(posterior_variance[1], posterior_variance[1:]))
                                          if len(posterior_variance) > 1 else np.log(np.maximum(posterior_variance, 1e-20)))

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(a, dtype=np.float64)).to(device).float()

        self.sqrt_recip_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod))
        self.sqrt_recipm1_alphas_cumprod = f32(np.sqrt(1.0 / alphas_cumprod - 1.0))
        self.posterior_mean_coef1 = f32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        self.posterior_mean_coef2 = f32((1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod))
        self.min_log = f32(posterior_log_variance_clipped)  # learned range: [posterior variance, beta]
        self.max_log = f32(np.log(betas))
        self.model_timesteps = torch.tensor(self.timestep_map, dtype=torch.long, device=device)

    def p_sample(self, model_output: torch.Tensor, x: torch.Tensor, i: int, noise: torch.Tensor | None,
                 temperature: float) -> torch.Tensor:
        """One step x_i -> x_{i-1} from the head's output [N, 2C] (eps, variance interpolation in [-1, 1])."""
        C = x.shape[1]
        eps, var_values = model_output[:, :C].float(), model_output[:, C:].float()
        frac = (var_values + 1) / 2
        model_log_variance = frac * self.max_log[i] + (1 - frac) * self.min_log[i]
        pred_xstart = self.sqrt_recip_alphas_cumprod[i] * x - self.sqrt_recipm1_alphas_cumprod[i] * eps
        mean = self.posterior_mean_coef1[i] * pred_xstart + self.posterior_mean_coef2[i] * x
        if i == 0:  # no noise on the last step
            return mean
        return mean + torch.exp(0.5 * model_log_variance) * noise * temperature

    def p_sample_loop(self, model: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                      temperature: float) -> torch.Tensor:
        """Run the chain from x_T = noise[0]; noise[k] (k >= 1) is the fresh noise of the k-th step.

        `model(x, t, i)` gets the current x [N, C], the original (un-respaced) timestep for each row and the
        respaced index i (counting down from num_timesteps - 1 to 0).
        """
        x = noise[0]
        for k, i in enumerate(range(self.num_timesteps - 1, -1, -1)):
            t = self.model_timesteps[i].expand(x.shape[0])
            out = model(x, t, i)
            x = self.p_sample(out, x, i, noise[k + 1] if i > 0 else None, temperature)
        return x
