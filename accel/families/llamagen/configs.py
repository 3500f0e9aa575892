"""LlamaGen's model configs and sampling options.

Model names (`CONFIGS`):

    llamagen_b   llamagen_l   llamagen_xl   llamagen_xxl   llamagen_3b        16x16 grid, 256 px
    llamagen_b_384 ... llamagen_3b_384                                         24x24 grid, 384 px
    llamagen_tiny        random-init test model: official structure, 2 narrow layers, 16x16 grid
    llamagen_tiny_draft  an even smaller random-init model with the same vocabulary and grid,
                         the default drafter of llamagen_tiny for speculative decoding
    llamagen_toy         trained on ToyShapes (accel/toy; 10 classes, 32x32 px): 4 layers, dim 128, a
                         16x16 grid of llamagen_vq_toy codes (1024 x 8, downsampling 2); its weights
                         are committed (accel/toy/weights) and loaded by name by default
    llamagen_toy_draft   its drafter: 2 layers, dim 64, same tokenizer, trained the same way
    llamagen_t2i_xl      text-to-image GPT-XL, Stage I: 256 px, 16x16 grid (t2i_XL_stage1_256.pt)
    llamagen_t2i_xl_512  the same network at 512 px, 32x32 grid, Stage II (t2i_XL_stage2_512.pt)
    llamagen_t2i_tiny, llamagen_t2i_tiny_draft   random-init t2i test models: official t2i structure
                         (120 condition tokens, 2048-dim caption features), narrow, 16x16 grid

The token grid follows the image size (image_size / 16 per side); the weights do not depend on it
(the RoPE table is computed, not stored), so both t2i files have the same keys and shapes.

Released files: c2i_B_256.pt -> llamagen_b, c2i_B_384.pt -> llamagen_b_384, c2i_L_256.pt ->
llamagen_l, c2i_L_384.pt -> llamagen_l_384, c2i_XL_384.pt -> llamagen_xl_384, c2i_XXL_384.pt ->
llamagen_xxl_384, c2i_3B_384.pt -> llamagen_3b_384 (DDP files hold the weights under "model", the
FSDP ones (XXL, 3B) are a bare state dict; both are read). Tokenizer: vq_ds16_c2i.pt.
t2i (HF peizesun/llamagen_t2i): t2i_XL_stage1_256.pt -> llamagen_t2i_xl, t2i_XL_stage2_512.pt ->
llamagen_t2i_xl_512; tokenizer vq_ds16_t2i.pt (the same VQ-16 network as vq_ds16_c2i.pt, other weights).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from accel.errors import ArgenError
from accel.families.llamagen.network import ModelArgs
from accel.sampling import check_draw


@dataclass
class LlamaGenConfig:
    """A named generator: network shape, image size, tokenizer and sampling defaults."""
    args: ModelArgs
    image_size: int
    cfg: float                        # guidance scale used for the paper's FID numbers
    tokenizer: dict = field(default_factory=dict)   # kwargs of accel.tokenizers.vq.build_tokenizer
    tokenizer_name: str = "llamagen_vq16"           # its name in accel.tokenizers.vq.TOKENIZER_CONFIGS
    default_drafter: str = "sjd"
    random_init_only: bool = False
    sampling: dict = field(default_factory=dict)    # other sampling defaults (t2i: top_k 1000)
    eval_image_size: int | None = None              # the release's --image-size-eval (384-px c2i: 256)

    @property
    def grid(self) -> int:
        return int(math.isqrt(self.args.block_size))

    @property
    def takes_prompts(self) -> bool:
        return self.args.model_type == "t2i"


# n_layer, n_head, dim (gpt.py GPT_B ... GPT_3B), and the cfg of the release's FID runs: the CFG column of
# GETTING_STARTED (the paper's table) for the 256- and 384-px rows alike; the 256-px XL, XXL and 3B rows have
# no released file (their configs load a checkpoint trained elsewhere)
_SIZES = {
    "b": (12, 12, 768, 2.0),
    "l": (24, 16, 1024, 2.0),
    "xl": (36, 20, 1280, 1.75),
    "xxl": (48, 24, 1536, 1.75),
    "3b": (24, 32, 3200, 1.65),
}
# the tiny models get a narrow tokenizer too, so that decoding is cheap on a CPU
TINY_TOKENIZER = {"ch": 32, "ch_mult": (1, 1, 2, 2, 2), "num_res_blocks": 1, "z_channels": 32}

CONFIGS: dict[str, LlamaGenConfig] = {}
for _size, (_layers, _heads, _dim, _cfg) in _SIZES.items():
    for _px in (256, 384):
        _name = f"llamagen_{_size}" + ("" if _px == 256 else "_384")
        CONFIGS[_name] = LlamaGenConfig(
            ModelArgs(n_layer=_layers, n_head=_heads, dim=_dim, block_size=(_px // 16) ** 2),
            image_size=_px, cfg=_cfg, eval_image_size=None if _px == 256 else 256,  # FID of 384-px samples at 256
            default_drafter="sjd" if _size == "b" else ("llamagen_b" if _px == 256 else "llamagen_b_384"))


def released_file(name: str) -> str | None:
    """The release's file name of an official c2i model (llamagen_b -> c2i_B_256.pt), None for the others."""
    size, _, px = name.removeprefix("llamagen_").partition("_")
    return f"c2i_{size.upper()}_{px or 256}.pt" if name.startswith("llamagen_") and size in _SIZES else None


CONFIGS["llamagen_tiny"] = LlamaGenConfig(
    ModelArgs(n_layer=2, n_head=4, dim=64, multiple_of=32, block_size=256),
    image_size=256, cfg=2.0, tokenizer=TINY_TOKENIZER, default_drafter="llamagen_tiny_draft",
    random_init_only=True)
CONFIGS["llamagen_tiny_draft"] = LlamaGenConfig(
    ModelArgs(n_layer=1, n_head=2, dim=32, multiple_of=32, block_size=256),
    image_size=256, cfg=2.0, tokenizer=TINY_TOKENIZER, random_init_only=True)

# trained toy models (`argen train-toy llamagen-tokenizer | llamagen | llamagen-draft`, training/llamagen.py):
# the official structure, fewer and narrower layers, 10 classes, the 16x16 grid of a downsampling-2 VQ on
# 32x32 ToyShapes. Sampling: top-k off, temperature 1, cfg 4.0, chosen with toy FID (docs/BENCHMARKS.md).
TOY_SAMPLING = {"top_k": 0, "temperature": 1.0}
CONFIGS["llamagen_toy"] = LlamaGenConfig(
    ModelArgs(n_layer=4, n_head=2, dim=128, multiple_of=32, num_classes=10, vocab_size=1024, block_size=256),
    image_size=32, cfg=4.0, tokenizer_name="llamagen_vq_toy", default_drafter="llamagen_toy_draft",
    sampling=TOY_SAMPLING)
CONFIGS["llamagen_toy_draft"] = LlamaGenConfig(
    ModelArgs(n_layer=2, n_head=2, dim=64, multiple_of=32, num_classes=10, vocab_size=1024, block_size=256),
    image_size=32, cfg=4.0, tokenizer_name="llamagen_vq_toy", default_drafter="sjd", sampling=TOY_SAMPLING)

# text-to-image (gpt.py GPT-XL with model_type t2i, cls_token_num 120; sample_t2i.py: cfg 7.5, top-k 1000)
T2I_TOKENS = 120          # condition positions = the T5 window
T2I_SAMPLING = {"top_k": 1000}
for _px, _suffix in ((256, ""), (512, "_512")):
    CONFIGS[f"llamagen_t2i_xl{_suffix}"] = LlamaGenConfig(
        ModelArgs(n_layer=36, n_head=20, dim=1280, model_type="t2i", cls_token_num=T2I_TOKENS,
                  block_size=(_px // 16) ** 2),
        image_size=_px, cfg=7.5, sampling=T2I_SAMPLING)
CONFIGS["llamagen_t2i_tiny"] = LlamaGenConfig(
    ModelArgs(n_layer=2, n_head=4, dim=64, multiple_of=32, model_type="t2i", cls_token_num=T2I_TOKENS,
              block_size=256),
    image_size=256, cfg=7.5, tokenizer=TINY_TOKENIZER, default_drafter="llamagen_t2i_tiny_draft",
    random_init_only=True, sampling=T2I_SAMPLING)
CONFIGS["llamagen_t2i_tiny_draft"] = LlamaGenConfig(
    ModelArgs(n_layer=1, n_head=2, dim=32, multiple_of=32, model_type="t2i", cls_token_num=T2I_TOKENS,
              block_size=256),
    image_size=256, cfg=7.5, tokenizer=TINY_TOKENIZER, random_init_only=True, sampling=T2I_SAMPLING)


def get_config(name: str) -> LlamaGenConfig:
    if name not in CONFIGS:
        raise ArgenError(f"unknown LlamaGen model {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


@dataclass
class SamplingOptions:
    cfg: float = 1.0
    cfg_interval: float = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    draw: str = "argen"  # "release": torch.multinomial as the release's sample() (accel.sampling)

    def check(self, num_vocab: int) -> None:
        check_draw(self.draw)
        if self.temperature < 0:
            raise ArgenError(f"temperature={self.temperature} is negative; pass a value >= 0 (1.0 is the default)")
        if not 0 <= int(self.top_k) <= num_vocab:
            raise ArgenError(f"top_k={self.top_k} is outside [0, {num_vocab}]; 0 turns top-k off")
        if not 0 < self.top_p <= 1:
            raise ArgenError(f"top_p={self.top_p} is outside (0, 1]; 1.0 turns nucleus filtering off")

    def uses_cfg(self, token_index: int) -> bool:
        """CFG for image token t: always when cfg_interval = -1, else while t - 1 <= cfg_interval
        (the official decode step i produces token i + 1 and drops guidance once i > cfg_interval)."""
        return self.cfg > 1.0 and (self.cfg_interval <= -1 or token_index - 1 <= self.cfg_interval)


SAMPLING_OPTIONS = tuple(f.name for f in fields(SamplingOptions))
TEXT_OPTIONS = ("text_encoder", "clean_prompts")  # t2i models only
