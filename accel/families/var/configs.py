"""VAR's model configs (the released d16 ... d36 and argen's tiny and toy ones) and sampling options."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from accel.errors import ArgenError
from accel.sampling import check_draw
from accel.tokenizers.msvq import PATCH_NUMS_256, PATCH_NUMS_512


@dataclass(frozen=True)
class VARConfig:
    depth: int
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    shared_aln: bool = False
    embed_dim: int = 0  # 0: the official rule, 64 * depth
    num_heads: int = 0  # 0: the official rule, depth
    num_classes: int = 1000
    vocab_size: int = 4096
    Cvae: int = 32
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    attn_l2_norm: bool = True
    tokenizer: str = "var_vqvae"
    sampling: dict = field(default_factory=dict)  # sampling defaults that differ from Sampling's

    @property
    def C(self) -> int:
        return self.embed_dim or 64 * self.depth

    @property
    def heads(self) -> int:
        return self.num_heads or self.depth

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


CONFIGS: dict[str, VARConfig] = {
    "var_d16": VARConfig(depth=16),
    "var_d20": VARConfig(depth=20),
    "var_d24": VARConfig(depth=24),
    "var_d30": VARConfig(depth=30),
    # VAR-d36-s: trained with shared AdaLN on the 512-px schedule
    "var_d36": VARConfig(depth=36, patch_nums=PATCH_NUMS_512, shared_aln=True),
    # random-init test configs: the official structure and schedules, 4 narrow blocks, narrow VAE
    "var_tiny": VARConfig(depth=4, embed_dim=128, num_heads=2, tokenizer="var_vqvae_tiny"),
    "var_tiny_512": VARConfig(depth=4, embed_dim=128, num_heads=2, patch_nums=PATCH_NUMS_512,
                              tokenizer="var_vqvae_tiny"),
    # trained on ToyShapes (10 classes, 32x32; `argen train-toy var`), weights in accel/toy/weights
    # sampling: top-k off (its vocabulary is 512 < VAR's 900); cfg chosen with toy FID (docs/BENCHMARKS.md)
    "var_toy": VARConfig(depth=4, embed_dim=128, num_heads=2, num_classes=10, vocab_size=512, Cvae=16,
                         tokenizer="var_vqvae_toy", sampling={"top_k": 0, "top_p": 0.96, "cfg": 5.0}),
}

@dataclass(frozen=True)
class Sampling:
    """The sampling options of autoregressive_infer_cfg, with the release's defaults (a config's `sampling`
    changes them for its model)."""

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    draw: str = "argen"  # "release": torch.multinomial as sample_with_top_k_top_p_ (accel.sampling)

    def check(self, vocab_size: int, default_top_k: int) -> None:
        check_draw(self.draw)
        if self.cfg < 0:
            raise ArgenError(f"cfg={self.cfg} is negative; the guidance scale must be >= 0 (0 = no guidance; VAR's "
                             f"FID setting is 1.5)")
        if not 0 <= self.top_k <= vocab_size:
            raise ArgenError(f"top_k={self.top_k} is outside [0, {vocab_size}]; use 0 to switch top-k off "
                             f"(this model's default: {default_top_k})")
        if not 0 < self.top_p <= 1:
            raise ArgenError(f"top_p={self.top_p} is outside (0, 1]; use 1.0 to switch top-p off (default 0.96)")


SAMPLING_OPTIONS = tuple(f.name for f in fields(Sampling))
