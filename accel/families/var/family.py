"""VAR as argen runs it: the checked settings, the released files loaded strictly, the generator."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from accel import flops as F_
from accel import registry
from accel.checkpoints import check_keys, read_checkpoint, unwrap_state_dict
from accel.errors import ArgenError
from accel.families.var.configs import CONFIGS, SAMPLING_OPTIONS, Sampling, VARConfig
from accel.compiled import resolve_compile
from accel.families.var.network import VAR, call_block
from accel.generator import BaseGenerator, require_weights, resolve_precision, seeded_init
from accel.options import check_option_names, parse_options
from accel.tokenizers.msvq import VQVAE, build_tokenizer


def _config(name: str) -> VARConfig:
    if name not in CONFIGS:
        raise ArgenError(f"unknown VAR model {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


def conditions_of(name: str) -> tuple[int | None, bool]:
    """VAR is class-conditional: (num_classes, False)."""
    return CONFIGS[name].num_classes, False


def build_model(name: str) -> VAR:
    """The network with the official keys and shapes, uninitialised parameters (use under meta)."""
    return VAR(_config(name))


def load_var_weights(model: VAR, checkpoint: str) -> None:
    state = unwrap_state_dict(read_checkpoint(checkpoint), prefer=("model", "state_dict", "module"))
    check_keys(model, state, f"VAR checkpoint {checkpoint!r}")
    model.load_state_dict(state, strict=True, assign=True)
    model.float()


def load_vqvae_weights(vae: VQVAE, checkpoint: str) -> None:
    state = vae.adapt_state_dict(unwrap_state_dict(read_checkpoint(checkpoint, "tokenizer_checkpoint"),
                                                     prefer=("model", "state_dict")))
    check_keys(vae, state, f"VAR tokenizer checkpoint {checkpoint!r}")
    vae.load_state_dict(state, strict=True, assign=True)
    vae.float()


class VARGenerator(BaseGenerator):
    family = "var"
    release_precision = "fp16"  # the demo's fp16 autocast

    def __init__(self, *, name: str, accel: str, cfg: VARConfig, model: VAR, vae: VQVAE, device: torch.device,
                 sampling: dict[str, Any], method: Any = None, compiled: Any = None):
        super().__init__(name=name, accel=accel, model=model, tokenizer=vae, device=device,
                         image_size=vae.image_size, num_classes=cfg.num_classes)
        self.cfg, self.vae, self.sampling, self.method = cfg, vae, sampling, method
        self.compiled = compiled  # accel.compiled.CompiledForward of network.call_block, or None (eager)
        self.compiled_parts = [compiled] if compiled is not None else []
        with torch.device("meta"):
            meta_vae = build_tokenizer(cfg.tokenizer, patch_nums=cfg.patch_nums)
        H = cfg.patch_nums[-1]
        self._decode_flops = F_.measured_flops(("msvq_decode", cfg.tokenizer, H), meta_vae, (1, cfg.Cvae, H, H),
                                               method="fhat_to_img")

    def sample_fhat(self, labels: torch.Tensor, generators: list[torch.Generator], run: Any = None) -> torch.Tensor:
        """The latents f_hat of labels [B], before the tokenizer decodes them (what methods and compile change);
        run: the method's TokenHooks for this call, or None."""
        return self.model.autoregressive_infer_cfg(self.vae.quantize, labels, generators, **self.sampling,
                                                   token_hooks=run, num_scales=run.num_scales if run else None,
                                                   block_call=self.compiled)

    def _sample(self, conditions: list, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        B = len(conditions)
        labels = torch.tensor(conditions, dtype=torch.long, device=self.device)
        counter = F_.FlopCounter()
        run = self.method.start(batch_rows=2 * B) if self.method is not None else None
        with F_.counting(counter):
            f_hat = self.sample_fhat(labels, generators, run)
        images = self.vae.fhat_to_img(f_hat)
        counter.add("tokenizer", self._decode_flops * B)
        counters = counter.per_image(B)
        if run is not None:
            counters.update(run.stats())
        return images, counters


def check_sampling(options: dict[str, Any], vocab_size: int, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampling keywords of autoregressive_infer_cfg: the release's defaults, the model's, then options."""
    defaults = defaults or {}
    return asdict(parse_options(Sampling, {**defaults, **options}, "VAR sampling", vocab_size=vocab_size,
                                default_top_k=defaults.get("top_k", Sampling.top_k)))


def option_names(name: str, accel: str) -> tuple[str, ...]:
    """The options make_generator(name, accel=accel) takes; an accel VAR does not support is refused."""
    method = registry.method(accel, name)
    return (*SAMPLING_OPTIONS, *(method.option_names if method is not None else ()))


@dataclass
class VARSettings:
    """What make_generator checks and fills in before it loads weights."""
    cfg: VARConfig
    sampling: dict[str, Any]
    method: Any  # what the method's check returned (its start(batch_rows) gives TokenHooks), or None
    checkpoint: str | None
    tokenizer_checkpoint: str | None


def check_settings(name: str, accel: str, checkpoint: str | None, tokenizer_checkpoint: str | None,
                   random_init: bool, options: dict[str, Any], config: VARConfig | None = None) -> VARSettings:
    """Every option name and value and the presence of weights, without reading a file or building the model
    (argen generate runs it before Ray starts; the files themselves may live on the workers only)."""
    cfg = config or _config(name)
    check_option_names(options, option_names(name, accel), f"{name} with accel={accel}")
    sampling = check_sampling({k: v for k, v in options.items() if k in SAMPLING_OPTIONS}, cfg.vocab_size,
                              cfg.sampling)
    record = registry.method(accel, name)
    method = None
    if record is not None:  # the method sees the network's config: its scale schedule and depth
        method = record.check(name, config=cfg,
                              options={k: v for k, v in options.items() if k in record.option_names})
    if not random_init:  # toy models default to their committed weights
        from accel.toy import bundled_weights

        checkpoint = checkpoint or (str(bundled_weights(name)) if bundled_weights(name) else None)
        tokenizer_checkpoint = tokenizer_checkpoint or (
            str(bundled_weights(cfg.tokenizer)) if bundled_weights(cfg.tokenizer) else None)
    require_weights(name, checkpoint, tokenizer_checkpoint, random_init)
    return VARSettings(cfg, sampling, method, checkpoint, tokenizer_checkpoint)


def make_generator(name: str, *, accel: str = "none", device: torch.device, checkpoint: str | None = None,
                   tokenizer_checkpoint: str | None = None, random_init: bool = False, init_seed: int = 0,
                   config: VARConfig | None = None, precision: str = "auto", compile: bool | str = False,
                   **options: Any) -> VARGenerator:
    """`config` overrides the named config (benchmarks: e.g. var_d16 width on the 512-px schedule).
    precision: accel.generator.resolve_precision (auto: the demo's fp16 autocast on CUDA, fp32 on CPU).
    compile: compile the release's block call for static shapes (accel.compiled; one graph per scale, shared by
    the blocks); a method's token hooks run eager."""
    settings = check_settings(name, accel, checkpoint, tokenizer_checkpoint, random_init, options, config)
    precision = resolve_precision(precision, device, VARGenerator.release_precision)
    cfg, checkpoint, tokenizer_checkpoint = settings.cfg, settings.checkpoint, settings.tokenizer_checkpoint
    with torch.device("meta"):
        model = VAR(cfg)
        vae = build_tokenizer(cfg.tokenizer, patch_nums=cfg.patch_nums)
    with seeded_init(init_seed):
        if checkpoint is not None:
            load_var_weights(model, checkpoint)
        else:
            model.to_empty(device="cpu")
            model.init_random_weights()
        if tokenizer_checkpoint is not None:
            load_vqvae_weights(vae, tokenizer_checkpoint)
        else:
            vae = build_tokenizer(cfg.tokenizer, patch_nums=cfg.patch_nums)  # PyTorch's default init, seeded
    model = model.to(device).eval().requires_grad_(False)
    vae = vae.to(device).eval().requires_grad_(False)
    compiled = None
    if resolve_compile(compile, device, accel):
        from accel.compiled import CompiledForward

        compiled = CompiledForward(call_block, device)
    generator = VARGenerator(name=name, accel=accel, cfg=cfg, model=model, vae=vae, device=device,
                             sampling=settings.sampling, method=settings.method, compiled=compiled)
    generator.precision = precision
    return generator


def config_with(name: str, **changes: Any) -> VARConfig:
    """A named config with some fields changed (benchmarks)."""
    return replace(_config(name), **changes)
