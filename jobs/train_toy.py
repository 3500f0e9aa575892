"""`argen train-toy <what> [key=value ...]`: train argen's small models on the ToyShapes data set.

Each entry point runs on this machine's CPU within about 30 minutes and writes a safetensors file plus
a JSON record of its training config and data-set seed into accel/toy/weights/ (or out_dir=...).

  argen train-toy classifier        the toy classifier (toy FID features, class-consistency)
  argen train-toy var-tokenizer     var_vqvae_toy: multi-scale VQVAE, downsampling 2
  argen train-toy var               var_toy: VAR on the toy tokenizer's codes (needs var-tokenizer)
  argen train-toy llamagen-tokenizer | llamagen | llamagen-draft | llamagen-eagle
                                    llamagen_vq_toy, llamagen_toy, its small drafter, its EAGLE drafter
  argen train-toy mar-tokenizer | mar   mar_kl_toy, mar_toy

Long runs: state=PATH keeps a resumable state, stop_at=STEP ends a sitting, probe_every=N measures
class-consistency while training (var, llamagen); data=v1|v2 picks the ToyShapes version.
"""
from __future__ import annotations

import importlib
import sys
from typing import Callable

from accel.api import ArgenError


def _entry(module: str, function: str) -> Callable[[dict[str, str]], None]:
    """The training function, imported when it is asked for (each module pulls in its family)."""
    return lambda opts: getattr(importlib.import_module(module), function)(opts)


ENTRY_POINTS: dict[str, Callable[[dict[str, str]], None]] = {
    "classifier": _entry("training.classifier", "train_classifier"),
    "var-tokenizer": _entry("training.var", "train_var_tokenizer"),
    "var": _entry("training.var", "train_var"),
    "llamagen-tokenizer": _entry("training.llamagen", "train_tokenizer"),
    "llamagen": _entry("training.llamagen", "train_llamagen"),
    "llamagen-draft": _entry("training.llamagen", "train_llamagen_draft"),
    "llamagen-eagle": _entry("training.llamagen", "train_llamagen_eagle"),
    "mar-tokenizer": _entry("training.mar", "train_mar_tokenizer"),
    "mar": _entry("training.mar", "train_mar"),
}


# the key=value options each entry point reads (a misspelt one would otherwise be ignored after a long run)
_GENERATOR = ("seed", "train", "steps", "batch", "lr", "out_dir", "threads")
# data version, EMA, earlier weights, a resumable state, class-consistency probes while training
_LONG_RUN = ("data", "ema", "init", "state", "save_every", "stop_at", "probe_every", "probe_samples")
OPTION_KEYS = {
    "classifier": ("seed", "train", "test", "epochs", "batch", "lr", "out_dir", "data"),
    "var-tokenizer": ("seed", "train", "steps", "batch", "lr", "out_dir", "data"),
    "var": (*_GENERATOR, "bf16", *_LONG_RUN),
    "llamagen-tokenizer": (*_GENERATOR, "test", "beta", "restart_every", "data"),
    "llamagen": (*_GENERATOR, "bf16", "label_dropout", "warmup", "weight_decay", *_LONG_RUN),
    "llamagen-draft": (*_GENERATOR, "bf16", "label_dropout", "warmup", "weight_decay", *_LONG_RUN),
    "llamagen-eagle": (*_GENERATOR, "data", "target", "state", "save_every", "stop_at", "warmup", "noise",
                       "p_weight"),
    "mar-tokenizer": (*_GENERATOR, "bf16", "kl_weight", "data"),
    "mar": (*_GENERATOR, "bf16", "init", "data", "state", "save_every", "stop_at", "warmup", "ema", "diffusion_batch_mul", "held_out", "head_steps",
            "head_batch", "head_images", "head_lr"),
}


def parse_options(what: str, args: list[str]) -> dict[str, str]:
    """key=value arguments of `argen train-toy <what>`, checked against OPTION_KEYS[what]."""
    opts = {}
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise ArgenError(f"argen train-toy {what}: {arg!r} is not key=value; pass e.g. steps=1500")
        if key not in OPTION_KEYS[what]:
            raise ArgenError(f"argen train-toy {what}: unknown option {key!r}; known: {', '.join(sorted(OPTION_KEYS[what]))}")
        opts[key] = value
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRY_POINTS:
        print(f"usage: argen train-toy <{'|'.join(ENTRY_POINTS)}> [key=value ...]", file=sys.stderr)
        return 2
    what = argv.pop(0)
    try:
        opts = parse_options(what, argv)
    except ArgenError as e:
        print(f"argen train-toy: error: {e}", file=sys.stderr)
        return 2
    ENTRY_POINTS[what](opts)
    return 0


if __name__ == "__main__":
    from jobs.cli import entry

    entry(main)
