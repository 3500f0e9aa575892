"""Generator networks, one file per family, in the official state_dict layout.

Each family module exposes `CONFIGS` (model name -> config), `build_model(name)` (the network alone,
buildable under torch.device("meta")), `conditions_of(name)` (number of classes, takes prompts),
`option_names(name, accel)` (the options its generator takes with that accel) and
`make_generator(name, accel=..., ...)`.
"""
from __future__ import annotations

import importlib

import torch

FAMILIES = ("var", "llamagen", "mar")


def _family_module(family: str):
    return importlib.import_module(f"accel.models.{family}")


def known_model_names() -> list[str]:
    names = []
    for family in FAMILIES:
        try:
            names.extend(_family_module(family).CONFIGS)
        except ModuleNotFoundError as e:  # a family not built yet; never hide errors inside a module
            if e.name != f"accel.models.{family}":
                raise
    return sorted(names)


def family_of(name: str) -> str:
    from accel.api import ArgenError

    family = str(name).split("_", 1)[0]
    if family in FAMILIES:
        try:
            if name in _family_module(family).CONFIGS:
                return family
        except ModuleNotFoundError as e:
            if e.name != f"accel.models.{family}":
                raise
    raise ArgenError(f"unknown model {name!r}; known models: {', '.join(known_model_names())}")


def conditions_of(name: str) -> tuple[int | None, bool]:
    """(number of classes, takes prompts) from the model's config, without building it: (None, True) for a
    text-to-image model, (n, False) for a class-conditional one."""
    return _family_module(family_of(name)).conditions_of(name)


def build_model(name: str) -> torch.nn.Module:
    """The generator network with the official keys and shapes (works under torch.device('meta'))."""
    return _family_module(family_of(name)).build_model(name)


def check_settings(name: str, accel: str, options: dict, checkpoint: str | None = None,
                   tokenizer_checkpoint: str | None = None, random_init: bool = False) -> None:
    """What argen generate can refuse before starting Ray and loading weights: the accel applies to the model,
    every option name is one its generator takes and every value is one it accepts, and weights are given
    (or committed, or random_init). Files are not opened: on a cluster they may exist on the workers only."""
    _family_module(family_of(name)).check_settings(name, accel, checkpoint, tokenizer_checkpoint, bool(random_init),
                                                   dict(options))


def eval_image_size_of(name: str) -> int | None:
    """The side the release computes FID at when it is not the generated one (LlamaGen's 384-px c2i models
    evaluate at 256, its --image-size-eval), else None. The generators carry it as `eval_image_size`."""
    if family_of(name) == "llamagen":
        return _family_module("llamagen").CONFIGS[name].eval_image_size
    return None
