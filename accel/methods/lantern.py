"""LANTERN relaxed acceptance (Jang et al., ICLR 2025) and the LANTERN++ bound (Park et al. 2025).

Visual AR models spread probability over many interchangeable codes, so drafts are rarely exact
matches. LANTERN lets a draft token x borrow the target probability of its latent neighbours:

  * neighbour table: for every code, the other codes sorted by L2 distance between the *raw* (not
    normalised) codebook rows, the code itself excluded. Computed once per codebook and cached on disk
    under accel.checkpoints.CACHE_DIR/lantern/, keyed by a SHA-256 of the codebook.
  * relaxed target: with neighbours b_1..b_k of x in distance order, take the longest prefix
    b_1..b_m whose total target mass sum_{i<=m} p(b_i) stays within the bound, and use
    p~(x) = p(x) + sum_{i<=m} p(b_i). Moving that mass onto x changes p by exactly that much in total
    variation, so the bound is a TVD bound: delta (LANTERN), or (lambda - 1) * p(x) (LANTERN++, so
    that p~(x) <= lambda * p(x)).
  * rejection: when a relaxed draft x is rejected, the next token comes from max(0, p - q) with x's
    first k+1 neighbours zeroed, as in the release's two verifiers: where the draft was certain
    (q(x) = 1: argmax drafts, the release's EAGLE-2 path) they are zeroed in the target p, so the
    next token is not drawn from the mass the draft stood for; where the draft was sampled from a
    drafter's q (the release's static-tree path, which uses q(x)) they are zeroed in q, so the
    residual keeps the target's mass on them. If nothing is left, the target itself is used.

delta = 0 (or k = 0, or lambda = 1) relaxes nothing: the rule is then exactly standard speculative
sampling (and greedy decoding with it reproduces plain greedy decoding).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from accel.errors import ArgenError
from accel.options import option_int


def check_lantern_options(k, delta, lam, vocab: int) -> tuple[int, float, float | None]:
    k = option_int("lantern_k", k, 0, vocab - 1, hint="latent neighbours to consider; the release uses 1000, "
                                                       "0 turns relaxation off")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta <= 1:
        hint = " (for the LANTERN++ multiplicative bound pass lantern_lambda instead)" if (
            isinstance(delta, (int, float)) and delta > 1) else ""
        raise ArgenError(f"lantern_delta={delta!r} must be a total-variation bound in [0, 1]; 0.1 is the "
                         f"release's default, 0 makes decoding exact{hint}")
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 1):
        raise ArgenError(f"lantern_lambda={lam!r} must be >= 1 (p~(x) <= lambda * p(x)); the LANTERN++ "
                         f"runs use 5, 10 or 20; leave it unset for the delta bound")
    return k, float(delta), (None if lam is None else float(lam))


def codebook_hash(codebook: torch.Tensor) -> str:
    arr = codebook.detach().float().cpu().contiguous().numpy()
    h = hashlib.sha256()
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:32]


def compute_neighbours(codebook: torch.Tensor, width: int, chunk: int = 1024) -> torch.Tensor:
    """[V, D] raw codebook -> [V, width] indices of the nearest other codes by L2, nearest first."""
    e = codebook.detach().float().cpu()
    V = e.shape[0]
    out = torch.empty(V, width, dtype=torch.long)
    for s in range(0, V, chunk):
        d = torch.cdist(e[s:s + chunk], e, p=2)
        rows = torch.arange(s, min(s + chunk, V))
        d[rows - s, rows] = float("inf")  # a code is never its own neighbour
        out[s:s + chunk] = torch.topk(d, width, dim=1, largest=False, sorted=True).indices
    return out


def neighbour_table(codebook: torch.Tensor, width: int, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The [V, width] table, read from or written to the disk cache (atomic write)."""
    import accel.checkpoints as ckpt

    V = codebook.shape[0]
    if not 0 <= width <= V - 1:
        raise ArgenError(f"neighbour table width {width} is outside [0, {V - 1}]")
    root = Path(cache_dir if cache_dir is not None else ckpt.CACHE_DIR) / "lantern"
    path = root / f"neighbours_{codebook_hash(codebook)}_w{width}.npy"
    if path.exists():
        arr = np.load(path, allow_pickle=False)
        if arr.shape == (V, width):
            return torch.from_numpy(arr.astype(np.int64))
    table = compute_neighbours(codebook, width)
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".part{os.getpid()}")
    dtype = np.uint16 if V <= 65536 else np.int32
    with open(tmp, "wb") as f:
        np.save(f, table.numpy().astype(dtype), allow_pickle=False)
    tmp.replace(path)
    return table


class LanternRule:
    """Relaxed acceptance: p~(x) = p(x) + neighbour mass within the bound (see the module docstring)."""

    def __init__(self, table: torch.Tensor, k: int, delta: float, lam: float | None = None):
        self.table, self.k, self.delta, self.lam = table, k, delta, lam
        # the sibling-by-sibling residual is needed only when some mass can move
        self.exact = k == 0 or (delta == 0 if lam is None else lam == 1.0)

    @classmethod
    def from_codebook(cls, codebook: torch.Tensor, k: int, delta: float, lam: float | None = None,
                      cache_dir=None) -> "LanternRule":
        width = min(k + 1, codebook.shape[0] - 1)
        table = neighbour_table(codebook, width, cache_dir) if k > 0 else torch.zeros(codebook.shape[0], 0, dtype=torch.long)
        return cls(table.to(codebook.device), k, delta, lam)

    def relaxed_prob(self, p: torch.Tensor, drafts: torch.Tensor):
        """p [B, G, V], drafts [B, G] -> (p~(d) [B, G], neighbours aggregated? [B, G])."""
        pd = p.gather(-1, drafts[..., None])[..., 0]
        if self.k == 0:
            return pd, torch.zeros_like(pd, dtype=torch.bool)
        nbrs = self.table.to(drafts.device)[drafts][..., :self.k]          # [B, G, k], nearest first
        cum = p.gather(-1, nbrs).cumsum(-1)                                # mass of b_1..b_m for each m
        bound = (self.lam - 1.0) * pd[..., None] if self.lam is not None else torch.full_like(pd[..., None], self.delta)
        m = (cum <= bound).sum(-1)                                         # longest prefix within the bound
        extra = torch.where(m > 0, cum.gather(-1, (m - 1).clamp(min=0)[..., None])[..., 0], torch.zeros_like(pd))
        # "relaxed" = some mass actually moved; leading zero-probability neighbours (outside top-k, say)
        # move nothing, and must not trigger the neighbour zeroing on rejection (else delta=0 would
        # not be exact, unlike in the release where any qualifying prefix counts)
        return pd + extra, extra > 0

    def residual(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, relaxed: torch.Tensor) -> torch.Tensor:
        """max(0, p - q) after rejecting `drafts` ([R, V], [R, V], [R], [R]), with the first k+1 neighbours of
        relaxed drafts zeroed in p where q(draft) = 1, in q elsewhere (see the module docstring)."""
        if self.k == 0 or not bool(relaxed.any()):
            return (p - q).clamp_min(0)
        nbrs = self.table.to(drafts.device)[drafts]                        # [R, k+1]
        certain = q.gather(-1, drafts[:, None])[:, 0] == 1
        in_p = (relaxed & certain)[:, None]
        in_q = (relaxed & ~certain)[:, None]
        p = torch.where(in_p, p.scatter(-1, nbrs, 0.0), p)
        q = torch.where(in_q, q.scatter(-1, nbrs, 0.0), q)
        return (p - q).clamp_min(0)
