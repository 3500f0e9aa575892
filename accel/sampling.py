"""Random draws with one torch.Generator per sample (row), shared by the families.

A sample's randomness comes only from its own generator, so it does not depend on which other
samples share its batch.
"""
from __future__ import annotations

import torch

from accel.errors import ArgenError

DRAWS = ("argen", "release")  # the `draw` sampling option of VAR and LlamaGen


def randn_rows(shape_per_row: tuple[int, ...], generators: list[torch.Generator], device: torch.device,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise [B, *shape_per_row], row b from generators[b]."""
    return torch.stack([torch.randn(shape_per_row, generator=g, device=device, dtype=dtype) for g in generators])


def categorical_rows(probs: torch.Tensor, generators: list[torch.Generator], rows: list[int] | None = None
                     ) -> torch.Tensor:
    """probs [B, K, V] (unnormalised allowed) -> indices [B, K] by inverse CDF: one uniform per draw,
    row b drawn with generators[b]. Rows not in `rows` get 0 (placeholders for finished rows).

    Same distribution as torch.multinomial, but one random number per draw instead of V (multinomial
    with one sample draws V exponentials per row, which dominates CPU time for V = 16384). The uniforms are
    drawn row by row (each row's own generator); the CDFs and searches run for many rows at once, in chunks
    of at most ~16M entries, with the same arithmetic per row as one row alone."""
    B, K, V = probs.shape
    out = torch.zeros(B, K, dtype=torch.long, device=probs.device)
    todo = list(range(B) if rows is None else rows)
    if not todo:
        return out
    u = torch.stack([torch.rand(K, 1, generator=generators[b], device=generators[b].device, dtype=torch.float64)
                     for b in todo]).to(probs.device)                          # [R, K, 1]
    chunk = max(1, (1 << 24) // max(1, K * V))
    for lo in range(0, len(todo), chunk):
        sel = torch.tensor(todo[lo:lo + chunk], device=probs.device)
        p = probs[sel]
        cdf = p.double().cumsum(-1)                                            # [r, K, V]
        idx = torch.searchsorted(cdf, u[lo:lo + chunk] * cdf[..., -1:], right=True).clamp(max=V - 1)
        bad = p.gather(-1, idx) <= 0
        if bool(bad.any()):  # u * total rounded up to total: take the last token with non-zero mass
            last = V - 1 - torch.argmax((p.flip(-1) > 0).int(), dim=-1, keepdim=True)
            idx = torch.where(bad, last, idx)
        out[sel] = idx[..., 0]
    return out


def multinomial_rows(probs: torch.Tensor, generators: list[torch.Generator], rows: list[int] | None = None
                     ) -> torch.Tensor:
    """probs [B, K, V] -> indices [B, K] with torch.multinomial on row b's generator, the releases' draw (VAR's
    sample_with_top_k_top_p_, LlamaGen's sample): at batch 1, the release's tokens for the same seed. It costs
    V exponentials per draw where categorical_rows draws one uniform. Rows not in `rows` get 0."""
    out = torch.zeros(probs.shape[:2], dtype=torch.long, device=probs.device)
    for b in range(probs.shape[0]) if rows is None else rows:
        out[b] = torch.multinomial(probs[b], 1, replacement=True, generator=generators[b])[:, 0]
    return out


def draw_rows(probs: torch.Tensor, generators: list[torch.Generator], rows: list[int] | None = None,
              draw: str = "argen") -> torch.Tensor:
    """The `draw` option: "argen" (categorical_rows, the default) or "release" (multinomial_rows)."""
    if draw == "release":
        return multinomial_rows(probs, generators, rows)
    return categorical_rows(probs, generators, rows)


def check_draw(draw: str) -> None:
    if draw not in DRAWS:
        raise ArgenError(f"draw={draw!r}; expected 'argen' (one uniform per token, the default) or 'release' "
                         f"(torch.multinomial as the release, which reproduces its sample for a seed at batch 1)")
