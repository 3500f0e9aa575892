"""Families and methods by name: the one path from (model name, accel) to a checked setting and a generator.

A family is a package of accel/families (var, llamagen, mar): its configs (`CONFIGS`), the release's network and
sampler, the hooks it offers, and `build_model`, `conditions_of`, `check_settings`, `make_generator`. A family
imports no method.

A method is a `Method` record in a module of accel/methods (`METHODS = (Method(...), ...)`). The registry finds
the records by listing that package, so adding a method is one new file plus its YAML in jobs/conf/accel/. A
method imports its family (the hooks it plugs into); the family reaches it only through this registry.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping

from accel.errors import ArgenError

FAMILIES = ("var", "llamagen", "mar")
BASELINE = "none"  # accel=none: the release's own sampling loop


@dataclass(frozen=True)
class Method:
    """One acceleration, as `accel=<name>` selects it.

    check:  (model name, the family's checked setting, the method's options) -> the method's checked settings,
            before any weights are loaded; bad values raise ArgenError. What "the family's setting" is, and
            what the result must provide, each family's make_generator says (its hooks).
    attach: (checked settings, the loaded parts as keywords) -> the object the family's sampler calls; None
            when the checked settings are that object already.
    sampling_defaults: sampling defaults the method's paper evaluates at where they differ from the release's
            (LazyMAR: 64 MAR steps); a model's own settings and the user's options still come first.
    """

    name: str
    family: str
    option_names: tuple[str, ...]
    check: Callable[..., Any]
    attach: Callable[..., Any] | None = None
    sampling_defaults: Mapping[str, Any] = field(default_factory=dict)


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise ArgenError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"accel.families.{family}")


def known_model_names() -> list[str]:
    return sorted(name for family in FAMILIES for name in family_module(family).CONFIGS)


def family_of(name: str) -> str:
    """The family of a model name (its prefix), or an ArgenError listing the known models."""
    family = str(name).split("_", 1)[0]
    if family in FAMILIES and name in family_module(family).CONFIGS:
        return family
    raise ArgenError(f"unknown model {name!r}; known models: {', '.join(known_model_names())}")


@functools.cache
def _methods() -> dict[str, Method]:
    import accel.methods

    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(accel.methods.__path__), key=lambda i: i.name):
        for method in getattr(importlib.import_module(f"accel.methods.{info.name}"), "METHODS", ()):
            if method.name in found or method.name == BASELINE:
                raise RuntimeError(f"method name {method.name!r} is declared twice (accel/methods/{info.name}.py)")
            found[method.name] = method
    return found


def method_names(family: str | None = None) -> tuple[str, ...]:
    """accel= values: every one, or those that apply to a family; "none" first."""
    return (BASELINE, *(m.name for m in _methods().values() if family is None or m.family == family))


def method(accel: str, name: str) -> Method | None:
    """The method accel= names for model `name`; None for "none". Unknown or not applying: ArgenError."""
    known = method_names()
    if accel not in known:
        raise ArgenError(f"unknown accel {accel!r}; known: {', '.join(known)}")
    family = family_of(name)
    if accel == BASELINE:
        return None
    record = _methods()[accel]
    if record.family != family:
        raise ArgenError(f"accel={accel!r} does not apply to {name} ({family}); "
                         f"choose one of {list(method_names(family))}")
    return record


def check_settings(name: str, accel: str, options: dict, checkpoint: str | None = None,
                   tokenizer_checkpoint: str | None = None, random_init: bool = False) -> None:
    """What argen generate can refuse before starting Ray and loading weights: the accel applies to the model,
    every option name is one its generator takes and every value is one it accepts, and weights are given
    (or committed, or random_init). Files are not opened: on a cluster they may exist on the workers only."""
    family_module(family_of(name)).check_settings(name, accel, checkpoint, tokenizer_checkpoint, bool(random_init),
                                                  dict(options))


def make_generator(name: str, accel: str, **kwargs: Any) -> Any:
    return family_module(family_of(name)).make_generator(name, accel=accel, **kwargs)


def conditions_of(name: str) -> tuple[int | None, bool]:
    """(number of classes, takes prompts) from the model's config, without building it: (None, True) for a
    text-to-image model, (n, False) for a class-conditional one."""
    return family_module(family_of(name)).conditions_of(name)


def eval_image_size_of(name: str) -> int | None:
    """The side the release computes FID at when it is not the generated one (LlamaGen's 384-px c2i models
    evaluate at 256, its --image-size-eval), else None. The generators carry it as `eval_image_size`."""
    return getattr(family_module(family_of(name)), "eval_image_size", lambda _: None)(name)
