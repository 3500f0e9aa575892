"""LlamaGen generators (Sun et al. 2024): class-to-image and text-to-image, in the official layouts.

A plain Llama decoder over VQ-16 codes (network.py, the release's gpt.py): condition
tokens, then the image tokens in raster order, 2D RoPE, SwiGLU, RMSNorm, no biases. The module tree and
parameter names follow the released `c2i_*.pt` and `t2i_*.pt` files exactly, so those files load with
strict key matching. This file holds weight loading and the generator; configs.py the named configs, sample.py the official
sampling loop.

Class-to-image (c2i): one condition token, a class embedding with the null class `num_classes`.
Text-to-image (t2i): 120 condition tokens, the FLAN-T5-XL features of the prompt (accel/text_encoder.py,
computed in generate(), left-padded) through `cls_embedding.cap_proj` (a GELU-tanh MLP); padding
positions are hidden from attention (each still sees itself). The null condition for CFG is the
stored `cls_embedding.uncond_embedding` [120, 2048], under the prompt's own mask, as in the release.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from accel import flops as F_
from accel import registry
from accel.compiled import resolve_compile
from accel.errors import ArgenError
from accel.families.llamagen.configs import (CONFIGS, SAMPLING_OPTIONS, TEXT_OPTIONS, LlamaGenConfig, SamplingOptions,
                                             get_config)
from accel.families.llamagen.hooks import Decoder
from accel.families.llamagen.network import TextCondition, Transformer
from accel.families.llamagen.sample import generate_tokens
from accel.generator import (PRECISIONS, BaseGenerator, require_weights, resolve_device, resolve_precision,
                             seeded_init)
from accel.options import check_option_names, parse_options
from accel.text_encoder import T5TextEncoder, check_given


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




class LlamaGenGenerator(BaseGenerator):
    family = "llamagen"
    release_precision = "bf16"     # sample_c2i.py / sample_t2i.py --precision bf16: the weights and KV cache
    precision_by_autocast = False  # cast, not autocast (make_generator casts the model, the method its drafter)

    def __init__(self, *, name, accel, model, tokenizer, device, config: LlamaGenConfig, opts: SamplingOptions,
                 decoder: Decoder | None = None, text_encoder=None, compiled=None):
        super().__init__(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                         image_size=config.image_size,
                         num_classes=0 if config.takes_prompts else config.args.num_classes)
        self.config, self.opts, self.decoder, self.text_encoder = config, opts, decoder, text_encoder
        self.conditions_are_prompts = config.takes_prompts
        self.eval_image_size = config.eval_image_size
        self.compiled = compiled  # accel.compiled.CompiledForward of the model, or None (eager)
        self.compiled_parts = [compiled] if compiled is not None else []

    def encode_prompts(self, prompts: list[str]) -> tuple[TextCondition, dict]:
        """Prompts -> the t2i condition (T5 features, left-padded, in one batch) and its counters."""
        enc = self.text_encoder.encode(prompts)
        F_.count("text_encoder", self.text_encoder.flops_per_prompt * len(prompts))
        cond = TextCondition(enc.features, enc.mask)
        return cond, {"prompt_truncated_fraction": sum(enc.truncated) / len(prompts),
                      "prompt_tokens": sum(min(n, self.text_encoder.window) for n in enc.lengths) / len(prompts)}

    def _sample(self, conditions, generators):
        B, N = len(conditions), self.model.block_size
        text_counters: dict = {}
        with F_.counting(F_.FlopCounter()) as flops:
            if self.config.takes_prompts:
                cond, text_counters = self.encode_prompts(conditions)
            else:
                cond = torch.tensor(conditions, dtype=torch.long, device=self.device)
            if self.decoder is None:
                tokens = generate_tokens(self.model, cond, self.opts, generators, forward=self.compiled)
                counters = {"accepted_length": 1.0, "target_forwards_per_image": float(N),
                            "target_forward_calls": float(N), "drafter_forwards_per_image": 0.0}
            else:
                tokens, counters = self.decoder.generate(cond, generators)
            with torch.autocast(self.device.type, enabled=False):  # the release decodes in fp32, outside autocast
                images = decode_tokens(self.tokenizer, tokens, self.config.grid)
        return images.float().clamp(-1, 1), {**flops.per_image(B), **counters, **text_counters}


def decode_tokens(tokenizer, tokens: torch.Tensor, grid: int) -> torch.Tensor:
    B = tokens.shape[0]
    embed_dim = tokenizer.quantize.embedding.weight.shape[1]
    key = ("llamagen_vq16", tokenizer.config_key, grid)
    F_.count("tokenizer", B * F_.measured_flops(key, tokenizer, (1, embed_dim, grid, grid), method="decode"))
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
    if record is not None and opts.draw != "argen":
        raise ArgenError(f"draw={opts.draw!r} with accel={accel}: the release's draw applies to plain decoding "
                         f"(accel=none); speculative decoders draw drafts and residuals their own way (leave draw "
                         f"unset)")
    if record is not None:  # the method sees the target's config and whether weights are random
        decoder_spec = record.check(name, config=cfg, random_init=random_init, options=method_options)
    return LlamaGenSettings(cfg, opts, decoder_spec, text_options, checkpoint, tokenizer_checkpoint)


def make_generator(name: str, *, accel: str = "none", device: torch.device | None = None,
                   checkpoint: str | None = None, tokenizer_checkpoint: str | None = None,
                   random_init: bool = False, compile: bool | str = False, precision: str = "auto",
                   **options: Any) -> LlamaGenGenerator:
    """compile: compile the plain decoding loop's forward (accel.compiled; static KV cache); the methods'
    decoders run eager. precision: accel.generator.resolve_precision (auto: bf16 weights and KV cache on CUDA,
    as the release's --precision bf16; fp32 on CPU); the logits, the sampling and the VQ decoder stay fp32."""
    from accel.tokenizers.vq import load_tokenizer

    device = resolve_device(device)
    settings = check_settings(name, accel, checkpoint, tokenizer_checkpoint, random_init, options)
    precision = resolve_precision(precision, device, LlamaGenGenerator.release_precision)
    cfg, opts, checkpoint = settings.cfg, settings.opts, settings.checkpoint
    text_encoder = None
    if cfg.takes_prompts:  # before the big weights: a missing encoder folder fails fast
        text_encoder = T5TextEncoder(settings.text_options.get("text_encoder"), device, window=cfg.args.cls_token_num,
                                     feature_dim=cfg.args.caption_dim,
                                     clean=settings.text_options.get("clean_prompts", True))
    model = load_model(name, checkpoint, random_init, device).to(PRECISIONS[precision])
    tokenizer = load_tokenizer(settings.tokenizer_checkpoint, device=device, random_init=random_init,
                               name=cfg.tokenizer_name, **cfg.tokenizer)
    decoder = None
    if accel != "none":  # the method's decoder replaces the token loop: decoder.generate(cond, generators)
        decoder = registry.method(accel, name).attach(settings.decoder_spec, target=model, target_name=name,
                                                      opts=opts, tokenizer=tokenizer, device=device,
                                                      random_init=random_init)
    compiled = None
    if resolve_compile(compile, device, accel):
        from accel.compiled import CompiledForward

        compiled = CompiledForward(model, device)
    generator = LlamaGenGenerator(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device, config=cfg,
                                  opts=opts, decoder=decoder, text_encoder=text_encoder, compiled=compiled)
    generator.precision = precision
    return generator
