"""LlamaGen generators (Sun et al. 2024): class-to-image and text-to-image, in the official layouts.

A plain Llama decoder over VQ-16 codes (accel/models/llamagen_gpt.py, the release's gpt.py): condition
tokens, then the image tokens in raster order, 2D RoPE, SwiGLU, RMSNorm, no biases. The module tree and
parameter names follow the released `c2i_*.pt` and `t2i_*.pt` files exactly, so those files load with
strict key matching. This file holds the named configs, weight loading, the official sampling loop and
the generator.

Class-to-image (c2i): one condition token, a class embedding with the null class `num_classes`.
Text-to-image (t2i): 120 condition tokens, the FLAN-T5-XL features of the prompt (accel/text_encoder.py,
computed in generate(), left-padded) through `cls_embedding.cap_proj` (a GELU-tanh MLP); padding
positions are hidden from attention (each still sees itself). The null condition for CFG is the
stored `cls_embedding.uncond_embedding` [120, 2048], under the prompt's own mask, as in the release.

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

Sampling (`generate_tokens`) is the official loop: CFG by batch doubling with the null class
`num_classes`, the same token fed to both halves, guidance on logits, then temperature, top-k and
top-p, `cfg_interval`, a static KV cache. Accelerations plug in through two hooks only: the
`KVCache` object (per-row positions, so speculative decoding rolls a row back by just moving its
length) and the acceptance rule of accel/methods/speculative.py.

Options (`load_generator(..., **options)`): cfg (guidance scale; default per model as in the
paper's FID runs, 7.5 for t2i as the release's t2i samplers), cfg_interval (-1), temperature (1.0),
top_k (0 = off; 1000 for t2i), top_p (1.0), greedy (False; True = argmax, the official
`sample_logits=False`). t2i only: text_encoder (local FLAN-T5-XL folder, required) and clean_prompts
(True). Speculative options are listed in accel/methods/speculative.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from accel import flops as F_
from accel import registry
from accel.errors import ArgenError
from accel.generator import BaseGenerator, require_weights, resolve_device, seeded_init
from accel.options import check_option_names, parse_options
from accel.models.llamagen_gpt import KVCache, ModelArgs, TextCondition, Transformer
from accel.sampling import categorical_rows
from accel.text_encoder import T5TextEncoder, check_given


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


_SIZES = {  # n_layer, n_head, dim (gpt.py GPT_B ... GPT_3B), cfg of the FID runs
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
# 32x32 ToyShapes. Sampling: top-k off, temperature 1, cfg 4.0 (on 300 samples, toy FID 55.0 and
# class-consistency 0.207 against 60.3 / 0.133 at the release's c2i default 2.0; docs/BENCHMARKS.md).
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


def conditions_of(name: str) -> tuple[int | None, bool]:
    """(ModelArgs.num_classes, False) for c2i models, (None, True) for t2i ones."""
    cfg = CONFIGS[name]
    return (None, True) if cfg.takes_prompts else (cfg.args.num_classes, False)


def eval_image_size(name: str) -> int | None:
    """The side the release computes FID at when it is not the generated one (384-px c2i models: 256)."""
    return get_config(name).eval_image_size


def build_model(name: str) -> Transformer:
    """The network with the official keys and shapes; no init work (fine under torch.device('meta'))."""
    return Transformer(get_config(name).args)


def get_config(name: str) -> LlamaGenConfig:
    if name not in CONFIGS:
        raise ArgenError(f"unknown LlamaGen model {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def bundled_checkpoint(name: str) -> str | None:
    """The committed weights of a toy model or tokenizer (accel/toy/weights/<name>.safetensors), if any."""
    from accel.toy import bundled_weights

    path = bundled_weights(name)
    return str(path) if path is not None else None


def load_model(name: str, checkpoint: str | None, random_init: bool, device: torch.device, seed: int = 0,
               what: str = "checkpoint") -> Transformer:
    """Released (or committed toy) weights, strict keys, or with random_init=True only a seeded random init.
    `what`: the setting the checkpoint came from (checkpoint, drafter_checkpoint), for messages."""
    if checkpoint is not None:
        from accel.checkpoints import load_strict, read_checkpoint, unwrap_state_dict

        with torch.device("meta"):
            model = build_model(name)
        state = unwrap_state_dict(read_checkpoint(checkpoint, what), prefer=("model", "module", "state_dict"))
        state.pop("freqs_cis", None)  # derived RoPE table, present in some training dumps; not a weight
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16 toy storage
        model = model.to_empty(device="cpu")
        load_strict(model, state, f"checkpoint {checkpoint!r} for {name}")
    else:
        require_weights(name, None, None, random_init, needs_tokenizer=False)
        with seeded_init(seed):
            model = build_model(name)
            model.init_weights(zero_output=False)
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------
# The official sampling loop
# ----------------------------------------------------------------------------------------------
@dataclass
class SamplingOptions:
    cfg: float = 1.0
    cfg_interval: float = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False

    def check(self, num_vocab: int) -> None:
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


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit below the k-th largest, then outside the smallest set whose
    probability reaches top_p (that set always keeps the most likely token). Works on [..., V]."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the token that crosses top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def logits_to_probs(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    if opts.greedy:  # the argmax is the same either way; LANTERN's greedy verifier (as released) relaxes the
        return logits.softmax(-1)  # plain softmax, so neighbours outside top-k keep their mass
    logits = logits / max(opts.temperature, 1e-5)
    if opts.top_k > 0 or opts.top_p < 1.0:
        logits = top_k_top_p_filtering(logits, int(opts.top_k), opts.top_p)
    return logits.softmax(-1)


def guided_logits(logits: torch.Tensor, opts: SamplingOptions, token_index: torch.Tensor | int) -> torch.Tensor:
    """[2B, ..., V] (cond rows, then null rows) -> [B, ..., V]. token_index: int, or [B, T] per position."""
    if opts.cfg <= 1.0:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    mixed = uncond + (cond - uncond) * opts.cfg
    if opts.cfg_interval <= -1:
        return mixed
    if isinstance(token_index, int):
        return mixed if opts.uses_cfg(token_index) else cond
    use = (token_index - 1 <= opts.cfg_interval)[..., None]  # [B, T, 1]
    return torch.where(use, mixed, cond)


def cfg_rows(x: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """Feed the same tokens (or positions) to the conditional and the unconditional half."""
    return torch.cat([x, x]) if opts.cfg > 1.0 else x


class CFGModel:
    """A Transformer with its KV cache and CFG doubling: the object that both the plain loop and
    speculative decoding drive. Rows are samples (the null half is handled inside)."""

    def __init__(self, model: Transformer, opts: SamplingOptions, batch: int, max_seq: int, flops: F_.FlopCounter,
                 component: str):
        self.model, self.opts, self.flops, self.component = model, opts, flops, component
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        self.rows = batch * (2 if opts.cfg > 1.0 else 1)
        self.cache = KVCache(model.config, self.rows, max_seq, dtype, device)
        self.device = device
        self.calls = 0

    def prefill(self, cond) -> torch.Tensor:
        """Condition tokens at positions [0, cls_token_num) -> guided logits [B, V] for image token 0.

        cond: class ids [B] (c2i) or a TextCondition (t2i); the null half is added here."""
        rows, cond_mask = self.model.condition_rows(cond, with_null=self.opts.cfg > 1.0)
        T = self.model.cls_token_num
        pos = torch.arange(T, device=self.device)
        logits = self.model(None, rows, pos, cache=self.cache, cond_mask=cond_mask)[:, -1]
        self._count(T, prefill=True)
        return guided_logits(logits, self.opts, 0)

    def decode(self, tokens: torch.Tensor, token_index: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] holding image tokens token_index [B, T] -> guided logits [B, T, V]; the logits at
        (b, t) predict image token token_index[b, t] + 1."""
        pos = token_index + self.model.cls_token_num
        logits = self.model(cfg_rows(tokens, self.opts), None, cfg_rows(pos, self.opts), cache=self.cache)
        self._count(tokens.shape[1])
        return guided_logits(logits, self.opts, token_index + 1)

    def _count(self, n_q: int, prefill: bool = False) -> None:
        self.calls += 1
        self.flops.add(self.component, self.model.forward_flops(self.rows, n_q, self.cache.kv_len, prefill))


def pick(probs: torch.Tensor, opts: SamplingOptions, generators: list[torch.Generator],
         rows: list[int] | None = None) -> torch.Tensor:
    """One token per row: argmax when greedy, else a draw with that row's generator. probs [B, V]."""
    if opts.greedy:
        return probs.argmax(-1)
    return categorical_rows(probs[:, None], generators, rows)[:, 0]


def generate_tokens(model: Transformer, labels, opts: SamplingOptions,
                    generators: list[torch.Generator], flops: F_.FlopCounter | None = None) -> torch.Tensor:
    """The official loop (accel=none): prefill samples token 0, then one cached step per token.

    labels: class ids [B] (c2i) or a TextCondition (t2i)."""
    flops = flops if flops is not None else F_.FlopCounter()
    B, N = len(labels), model.block_size
    runner = CFGModel(model, opts, B, model.cls_token_num + N, flops, "target")
    seq = torch.empty(B, N, dtype=torch.long, device=labels.device)
    seq[:, 0] = pick(logits_to_probs(runner.prefill(labels), opts), opts, generators)
    for t in range(1, N):
        index = torch.full((B, 1), t - 1, device=labels.device, dtype=torch.long)
        logits = runner.decode(seq[:, t - 1:t], index)[:, -1]
        seq[:, t] = pick(logits_to_probs(logits, opts), opts, generators)
    return seq


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------
SAMPLING_OPTIONS = tuple(f.name for f in fields(SamplingOptions))
TEXT_OPTIONS = ("text_encoder", "clean_prompts")  # t2i models only


class LlamaGenGenerator(BaseGenerator):
    family = "llamagen"

    def __init__(self, *, name, accel, model, tokenizer, device, config: LlamaGenConfig, opts: SamplingOptions,
                 decoder=None, text_encoder=None):
        super().__init__(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                         image_size=config.image_size,
                         num_classes=0 if config.takes_prompts else config.args.num_classes)
        self.config, self.opts, self.decoder, self.text_encoder = config, opts, decoder, text_encoder
        self.conditions_are_prompts = config.takes_prompts
        self.eval_image_size = config.eval_image_size

    def encode_prompts(self, prompts: list[str], flops: F_.FlopCounter | None = None) -> tuple[TextCondition, dict]:
        """Prompts -> the t2i condition (T5 features, left-padded, in one batch) and its counters."""
        enc = self.text_encoder.encode(prompts)
        if flops is not None:
            flops.add("text_encoder", self.text_encoder.flops_per_prompt * len(prompts))
        cond = TextCondition(enc.features, enc.mask)
        return cond, {"prompt_truncated_fraction": sum(enc.truncated) / len(prompts),
                      "prompt_tokens": sum(min(n, self.text_encoder.window) for n in enc.lengths) / len(prompts)}

    def _sample(self, conditions, generators):
        flops = F_.FlopCounter()
        B, N = len(conditions), self.model.block_size
        text_counters: dict = {}
        if self.config.takes_prompts:
            cond, text_counters = self.encode_prompts(conditions, flops)
        else:
            cond = torch.tensor(conditions, dtype=torch.long, device=self.device)
        if self.decoder is None:
            tokens = generate_tokens(self.model, cond, self.opts, generators, flops)
            counters = {"accepted_length": 1.0, "target_forwards_per_image": float(N),
                        "target_forward_calls": float(N), "drafter_forwards_per_image": 0.0}
        else:
            tokens, counters = self.decoder.generate(cond, generators, flops)
        with torch.autocast(self.device.type, enabled=False):  # the release decodes in fp32, outside autocast
            images = decode_tokens(self.tokenizer, tokens, self.config.grid, flops)
        return images.float().clamp(-1, 1), {**flops.per_image(B), **counters, **text_counters}


def decode_tokens(tokenizer, tokens: torch.Tensor, grid: int, flops: F_.FlopCounter | None = None) -> torch.Tensor:
    B = tokens.shape[0]
    embed_dim = tokenizer.quantize.embedding.weight.shape[1]
    if flops is not None:
        from accel.flops import measured_flops

        key = ("llamagen_vq16", tokenizer.config_key, grid)
        flops.add("tokenizer", B * measured_flops(key, tokenizer, (1, embed_dim, grid, grid), method="decode"))
    return tokenizer.decode_code(tokens, (B, embed_dim, grid, grid))


def option_names(name: str, accel: str) -> tuple[str, ...]:
    """The options make_generator(name, accel=accel) takes; an accel LlamaGen does not support is refused."""
    method = registry.method(accel, name)
    return (SAMPLING_OPTIONS + (TEXT_OPTIONS if get_config(name).takes_prompts else ())
            + (method.option_names if method is not None else ()))


@dataclass
class LlamaGenSettings:
    """What make_generator checks and fills in before it loads weights."""
    cfg: LlamaGenConfig
    opts: SamplingOptions
    decoder_spec: Any  # what the method's check returned (its attach builds the decoder), or None
    text_options: dict[str, Any]
    checkpoint: str | None
    tokenizer_checkpoint: str | None


def check_settings(name: str, accel: str, checkpoint: str | None, tokenizer_checkpoint: str | None,
                   random_init: bool, options: dict[str, Any]) -> LlamaGenSettings:
    """Every option name and value and the presence of weights, without reading a file or building the model
    (argen generate runs it before Ray starts; the files themselves may live on the workers only)."""
    cfg = get_config(name)
    check_option_names(options, option_names(name, accel), f"{name} with accel={accel}")
    if cfg.random_init_only and not random_init:
        raise ArgenError(f"{name} is a test model with no released weights; pass random_init=True "
                         f"(model.random_init=true)")
    if cfg.takes_prompts and not random_init and tokenizer_checkpoint is None:
        raise ArgenError(f"{name}: no tokenizer_checkpoint given; pass the text-to-image VQ file vq_ds16_t2i.pt "
                         f"(model.tokenizer_checkpoint=...), or random_init=True for random weights")
    if not random_init:  # toy models default to their committed weights
        checkpoint = checkpoint or bundled_checkpoint(name)
        tokenizer_checkpoint = tokenizer_checkpoint or bundled_checkpoint(cfg.tokenizer_name)
    require_weights(name, checkpoint, tokenizer_checkpoint, random_init)
    sampling = {**cfg.sampling, "cfg": cfg.cfg, **{k: v for k, v in options.items() if k in SAMPLING_OPTIONS}}
    opts = parse_options(SamplingOptions, sampling, f"{name} sampling", num_vocab=cfg.args.vocab_size)
    text_options = {k: options[k] for k in TEXT_OPTIONS if k in options}
    if not isinstance(text_options.get("clean_prompts", True), bool):
        raise ArgenError(f"clean_prompts={text_options['clean_prompts']!r}; expected true (the release's prompt "
                         f"cleaning) or false")
    if cfg.takes_prompts:
        check_given(text_options.get("text_encoder"))
    method_options = {k: v for k, v in options.items() if k not in SAMPLING_OPTIONS and k not in TEXT_OPTIONS}
    record, decoder_spec = registry.method(accel, name), None
    if record is not None:  # the method sees the target's config and whether weights are random
        decoder_spec = record.check(name, config=cfg, random_init=random_init, options=method_options)
    return LlamaGenSettings(cfg, opts, decoder_spec, text_options, checkpoint, tokenizer_checkpoint)


def make_generator(name: str, *, accel: str = "none", device: torch.device | None = None,
                   checkpoint: str | None = None, tokenizer_checkpoint: str | None = None,
                   random_init: bool = False, **options: Any) -> LlamaGenGenerator:
    from accel.tokenizers.vq import load_tokenizer

    device = resolve_device(device)
    settings = check_settings(name, accel, checkpoint, tokenizer_checkpoint, random_init, options)
    cfg, opts, checkpoint = settings.cfg, settings.opts, settings.checkpoint
    text_encoder = None
    if cfg.takes_prompts:  # before the big weights: a missing encoder folder fails fast
        text_encoder = T5TextEncoder(settings.text_options.get("text_encoder"), device, window=cfg.args.cls_token_num,
                                     feature_dim=cfg.args.caption_dim,
                                     clean=settings.text_options.get("clean_prompts", True))
    model = load_model(name, checkpoint, random_init, device)
    tokenizer = load_tokenizer(settings.tokenizer_checkpoint, device=device, random_init=random_init,
                               name=cfg.tokenizer_name, **cfg.tokenizer)
    decoder = None
    if accel != "none":  # the method's decoder replaces the token loop: decoder.generate(cond, generators, flops)
        decoder = registry.method(accel, name).attach(settings.decoder_spec, target=model, target_name=name,
                                                      opts=opts, tokenizer=tokenizer, device=device,
                                                      random_init=random_init)
    return LlamaGenGenerator(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device, config=cfg,
                             opts=opts, decoder=decoder, text_encoder=text_encoder)
