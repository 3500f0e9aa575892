"""Random draws with one torch.Generator per sample (row), shared by the families.

A sample's randomness comes only from its own generator, so it does not depend on which other
samples share its batch.
"""
from __future__ import annotations

import torch


def multinomial_rows(probs: torch.Tensor, generators: list[torch.Generator], num_samples: int = 1,
                     replacement: bool = True) -> torch.Tensor:
    """probs [B, ..., V] (unnormalised allowed) -> indices [B, ..., num_samples], row b drawn with generators[b]."""
    B, V = probs.shape[0], probs.shape[-1]
    if len(generators) != B:
        raise ValueError(f"{B} rows but {len(generators)} generators")
    flat = probs.reshape(B, -1, V).float()
    out = [torch.multinomial(flat[b], num_samples=num_samples, replacement=replacement, generator=generators[b])
           for b in range(B)]
    return torch.stack(out).reshape(*probs.shape[:-1], num_samples)


def rand_rows(shape_per_row: tuple[int, ...], generators: list[torch.Generator], device: torch.device,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) noise [B, *shape_per_row], row b from generators[b]."""
    return torch.stack([torch.rand(shape_per_row, generator=g, device=device, dtype=dtype) for g in generators])


def randn_rows(shape_per_row: tuple[int, ...], generators: list[torch.Generator], device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise [B, *shape_per_row], row b from generators[b]."""
    return torch.stack([torch.randn(shape_per_row, generator=g, device=device, dtype=dtype) for g in generators])
