"""MAR as argen runs it: the checked settings, the released files (model_ema) loaded strictly, the generator."""
from __future__ import annotations

import argparse
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from accel import flops as fl
from accel import registry
from accel.errors import ArgenError
from accel.families.mar.configs import CONFIGS, LATENT_SCALE, SAMPLING_OPTIONS, Sampling, network_config
from accel.compiled import resolve_compile
from accel.families.mar.diffloss import call_head
from accel.families.mar.network import MAR, call_block
from accel.generator import BaseGenerator, require_weights, resolve_precision, seeded_init
from accel.options import check_option_names, parse_options


def conditions_of(name: str) -> tuple[int | None, bool]:
    """MAR is class-conditional; upstream calls the class count `class_num`."""
    return int(CONFIGS[name]["class_num"]), False


def build_model(name: str) -> MAR:
    if name not in CONFIGS:
        raise ArgenError(f"unknown MAR model {name!r}; known: {sorted(CONFIGS)}")
    return MAR(**network_config(CONFIGS[name]))


def randomize_zero_init(model: MAR) -> None:
    """Random weights for tests and benchmarks: the official init zeroes the head's adaLN and output layers,
    which would make every sample ignore the transformer; give those layers xavier weights instead."""
    net = model.diffloss.net
    for layer in [b.adaLN_modulation[-1] for b in net.res_blocks] + [net.final_layer.adaLN_modulation[-1],
                                                                     net.final_layer.linear]:
        nn.init.xavier_uniform_(layer.weight)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """checkpoint-last.pth -> the EMA weights ("model_ema"), else "model". The training script also
    stores its argparse Namespace under "args"; it is allowed through the weights-only loader."""
    from accel.checkpoints import read_checkpoint, unwrap_state_dict

    with torch.serialization.safe_globals([argparse.Namespace]):
        return unwrap_state_dict(read_checkpoint(path), prefer=("model_ema", "model"))


# ----------------------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------------------


class MARGenerator(BaseGenerator):
    family = "mar"
    release_precision = "fp16"  # engine_mar.evaluate's torch.cuda.amp.autocast()

    def __init__(self, *, name, accel, model, tokenizer, device, num_iter, cfg, cfg_schedule, temperature,
                 num_sampling_steps, method=None, latent_scale: float = LATENT_SCALE, compiled=None):
        super().__init__(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                         image_size=CONFIGS[name]["img_size"], num_classes=CONFIGS[name]["class_num"])
        self.num_iter, self.cfg, self.cfg_schedule = num_iter, cfg, cfg_schedule
        self.temperature, self.num_sampling_steps = temperature, num_sampling_steps
        self.method = method  # the method's checked settings (new_caches(B), stats(*caches)) or None
        self.latent_scale = latent_scale
        # (block call, head call): accel.compiled.CompiledForward of network.call_block and diffloss.call_head
        self.compiled = compiled
        self.compiled_parts = list(compiled) if compiled is not None else []

    def sample_latents(self, labels: torch.Tensor, generators: list[torch.Generator], caches: tuple = (None, None)
                       ) -> torch.Tensor:
        """The latents of labels [B], before the tokenizer decodes them (what methods and compile change);
        caches: the method's (transformer cache, head cache) for this call."""
        block_call, head_call = self.compiled if self.compiled is not None else (None, None)
        return self.model.sample_tokens(labels, generators, num_iter=self.num_iter, cfg=self.cfg,
                                        cfg_schedule=self.cfg_schedule, temperature=self.temperature,
                                        num_sampling_steps=self.num_sampling_steps, cache=caches[0],
                                        head_cache=caches[1], block_call=block_call, head_call=head_call)

    def _sample(self, conditions: list, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        B = len(conditions)
        labels = torch.tensor(conditions, dtype=torch.long, device=self.device)
        caches = self.method.new_caches(B) if self.method is not None else (None, None)
        counter = fl.FlopCounter()
        with fl.counting(counter):
            tokens = self.sample_latents(labels, generators, caches)
            images = self.tokenizer.decode(tokens / self.latent_scale)
        counter.add("tokenizer", B * vae_decode_flops(self.name, tuple(tokens.shape[1:])))
        counters = counter.per_image(B)
        if self.method is not None:
            counters.update(self.method.stats(*caches))
        return images.float(), counters


def vae_decode_flops(name: str, latent_shape: tuple[int, ...]) -> float:
    """FLOPs of decoding one image, counted once on a copy of the tokenizer built on the meta device."""
    from accel.tokenizers import build_tokenizer

    key = ("mar_vae_decode", CONFIGS[name]["tokenizer"], tuple(sorted(CONFIGS[name]["tokenizer_kwargs"].items())),
           latent_shape)
    if key not in _VAE_FLOPS:
        with torch.device("meta"):
            vae = build_tokenizer(CONFIGS[name]["tokenizer"], **CONFIGS[name]["tokenizer_kwargs"])
        _VAE_FLOPS[key] = fl.measured_flops(key, vae, (1,) + latent_shape, method="decode")
    return _VAE_FLOPS[key]


_VAE_FLOPS: dict[tuple, float] = {}


def stored_latent_scale(path: str | None, what: str = "tokenizer_checkpoint") -> float | None:
    """The "latent_scale" a toy checkpoint carries in its safetensors metadata (set by argen train-toy)."""
    if path is None or not str(path).endswith(".safetensors") or str(path).startswith("s3://"):
        return None
    from safetensors import safe_open

    from accel.checkpoints import existing_file

    with safe_open(str(existing_file(path, what)), framework="pt") as f:
        value = (f.metadata() or {}).get("latent_scale")
    if value is None:
        return None
    try:
        scale = float(value)
    except ValueError:
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise ArgenError(f"{path}: metadata latent_scale={value!r} is not a positive number; retrain with "
                         f"`argen train-toy mar-tokenizer` (or mar)")
    return scale


def latent_scale_for(name: str, checkpoint: str | None, tokenizer_checkpoint: str | None, random_init: bool) -> float:
    """The factor latents were multiplied by when the model was trained: the model checkpoint's metadata, else
    the tokenizer's, else the config's (0.2325 for kl16). Random toy weights without either use 1.0."""
    for path, what in ((checkpoint, "checkpoint"), (tokenizer_checkpoint, "tokenizer_checkpoint")):
        scale = stored_latent_scale(path, what)
        if scale is not None:
            return scale
    if CONFIGS[name]["latent_scale"] is not None:
        return float(CONFIGS[name]["latent_scale"])
    if random_init:
        return 1.0
    raise ArgenError(f"{name}: neither checkpoint {checkpoint!r} nor tokenizer_checkpoint {tokenizer_checkpoint!r} "
                     f"carries the latent scale factor (safetensors metadata 'latent_scale'); use the files written "
                     f"by `argen train-toy mar-tokenizer` / `argen train-toy mar`, or random_init=True")


def option_names(name: str, accel: str) -> tuple[str, ...]:
    """The options make_generator(name, accel=accel) takes; an accel MAR does not support is refused."""
    method = registry.method(accel, name)
    return SAMPLING_OPTIONS + (method.option_names if method is not None else ())


@dataclass
class MARSettings:
    """What make_generator checks and fills in before it loads weights."""
    config: dict[str, Any]
    sampling: Sampling
    method: Any  # what the method's check returned (new_caches(B) -> (cache, head_cache); stats), or None
    checkpoint: str | None
    tokenizer_checkpoint: str | None


def check_settings(name: str, accel: str, checkpoint: str | None, tokenizer_checkpoint: str | None,
                   random_init: bool, options: dict[str, Any]) -> MARSettings:
    """Every option name and value and the presence of weights, without reading a file or building the model
    (argen generate runs it before Ray starts; the files themselves may live on the workers only)."""
    if name not in CONFIGS:
        raise ArgenError(f"unknown MAR model {name!r}; known: {sorted(CONFIGS)}")
    check_option_names(options, option_names(name, accel), f"{name} with accel={accel}")
    config = CONFIGS[name]
    given = {k: v for k, v in options.items() if k in SAMPLING_OPTIONS}
    record, method = registry.method(accel, name), None
    paper = dict(record.sampling_defaults) if record is not None else {}
    # the release's defaults, the method paper's, the config's own (toy, tiny), then the options
    sampling = parse_options(Sampling, {"cfg": config["cfg"], **paper, **config["sampling"], **given},
                             f"{name} sampling", name=name)
    if record is not None:  # the method sees the model's config (depths) and whether CFG runs two branches
        method = record.check(name, config=config, guided=sampling.cfg != 1.0,
                              options={k: v for k, v in options.items() if k not in SAMPLING_OPTIONS})
    if not random_init:  # toy models default to their committed weights
        from accel.toy import bundled_weights

        if checkpoint is None and bundled_weights(name) is not None:
            checkpoint = str(bundled_weights(name))
        if tokenizer_checkpoint is None and bundled_weights(config["tokenizer"]) is not None:
            tokenizer_checkpoint = str(bundled_weights(config["tokenizer"]))
    require_weights(name, checkpoint, tokenizer_checkpoint, random_init)
    return MARSettings(config, sampling, method, checkpoint, tokenizer_checkpoint)


def make_generator(name: str, *, accel: str = "none", device: torch.device, checkpoint: str | None = None,
                   tokenizer_checkpoint: str | None = None, random_init: bool = False, precision: str = "auto",
                   compile: bool | str = False, **options) -> MARGenerator:
    """Sampling options: num_iter (256, the paper's FID setting; 64 with accel=lazymar, as LazyMAR evaluates;
    mar_tiny and mar_toy: 64), cfg (the paper's value for the size), cfg_schedule ("linear"),
    temperature (1.0), num_sampling_steps (100), seed_init (0: the seed of random_init weights); a config's
    "sampling" dict changes these defaults (mar_toy). Toy models load their committed weights
    (accel/toy/weights) when no checkpoint is given and random_init is false.
    With accel="lazymar", the options of accel.methods.lazymar.LazyMARConfig as well.
    precision: accel.generator.resolve_precision (auto: the release's fp16 autocast on CUDA, fp32 on CPU).
    compile: compile the release's block call and head call (accel.compiled; the shapes that change with the
    masking schedule compile once, generalised); a method's caches run eager."""
    from accel.tokenizers import build_tokenizer
    from accel.tokenizers.kl_vae import load_kl16

    settings = check_settings(name, accel, checkpoint, tokenizer_checkpoint, random_init, options)
    precision = resolve_precision(precision, device, MARGenerator.release_precision)
    config, seed = settings.config, settings.sampling.seed_init
    checkpoint, tokenizer_checkpoint = settings.checkpoint, settings.tokenizer_checkpoint
    latent_scale = latent_scale_for(name, checkpoint, tokenizer_checkpoint, random_init)

    with seeded_init(seed):
        model = build_model(name)
        tokenizer = build_tokenizer(config["tokenizer"], **config["tokenizer_kwargs"])
        if random_init:
            randomize_zero_init(model)
    if checkpoint is not None:
        from accel.checkpoints import load_strict

        load_strict(model, read_weights(checkpoint), f"MAR checkpoint {checkpoint}")
    if tokenizer_checkpoint is not None:
        if config["tokenizer_kwargs"]:
            warnings.warn(f"{name} uses a narrowed tokenizer {config['tokenizer_kwargs']}; "
                          f"a released kl16.ckpt will not match it")
        load_kl16(tokenizer, tokenizer_checkpoint)
    model.to(device).eval()
    tokenizer.to(device).eval()
    compiled = None
    if resolve_compile(compile, device, accel):
        from accel.compiled import CompiledForward

        compiled = (CompiledForward(call_block, device, dynamic=None), CompiledForward(call_head, device, dynamic=None))
    generator = MARGenerator(name=name, accel=accel, model=model, tokenizer=tokenizer, device=device,
                             method=settings.method, latent_scale=latent_scale, compiled=compiled,
                             **{k: v for k, v in asdict(settings.sampling).items() if k != "seed_init"})
    generator.precision = precision
    return generator
