"""Option values as the generators take them: from Python, YAML or a command line (where every value may
arrive as a string), checked once, with an error that names the option, its value and an example.

Each family's sampling options are a dataclass read by `parse_options`: the field types say how a value is
converted (int, float, bool, str, None where allowed), the defaults are the example in an error, and the
class's `check(**context)` tests the ranges that depend on the model.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import numpy as np

from accel.errors import ArgenError


def _as_number(value: Any, kind: type) -> int | float | None:
    """value as an int or float, or None where it is not one (a bool, a list, "x", 1.5 for an int). Strings
    convert: options can come from a command line."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, str, np.integer, np.floating)):
        return None
    if kind is int and isinstance(value, (int, np.integer)):
        return int(value)
    if kind is int and isinstance(value, str):
        try:
            return int(value)  # exact for big numbers, which float() would round
        except ValueError:
            pass
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if kind is float:
        return number
    return int(number) if number.is_integer() else None


def option_number(name: str, value: Any, kind: type, example: str) -> int | float:
    """int(value) or float(value) for an option, or an ArgenError naming the option, its value and an example."""
    number = _as_number(value, kind)
    if number is None:
        what = "a whole number" if kind is int and _as_number(value, float) is not None else "a number"
        raise ArgenError(f"{name}={value!r} is not {what}; pass e.g. {name}={example}")
    return number


def option_int(name: str, value: Any, low: int, high: int | None = None, *, hint: str = "") -> int:
    """An integer option in [low, high], or an ArgenError naming the option, its value and the range."""
    number = _as_number(value, int)
    if number is None or number < low or (high is not None and number > high):
        span = f">= {low}" if high is None else f"from {low} to {high}"
        raise ArgenError(f"{name}={value!r}; expected an integer {span}" + (f" ({hint})" if hint else ""))
    return number


def option_flag(name: str, value: Any) -> bool:
    """A true/false option: a bool, or the strings true/false (any case) from a command line."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ArgenError(f"{name}={value!r} is not true or false; pass {name}=true or {name}=false")


def check_option_names(options: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Every name in options is one of allowed, or an ArgenError listing the known ones and the closest."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        close = {name: difflib.get_close_matches(name, list(allowed), n=1) for name in unknown}
        hint = "".join(f"; {name!r}: did you mean {match[0]!r}?" for name, match in close.items() if match)
        raise ArgenError(f"unknown option(s) {unknown} for {where}; known options: {sorted(allowed)}{hint}")


Options = TypeVar("Options")


def parse_options(cls: type[Options], values: Mapping[str, Any], where: str, **context: Any) -> Options:
    """An options dataclass from option values: names checked (the closest known one suggested), every value
    converted once to its field's type, then `cls.check(**context)` where the class has one. Nothing given is
    changed: the result is a new object."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_option_names(values, list(fields), where)
    hints = typing.get_type_hints(cls)
    converted = {name: _convert(name, value, hints[name], fields[name].default) for name, value in values.items()}
    options = cls(**converted)
    if hasattr(options, "check"):
        options.check(**context)
    return options


def _convert(name: str, value: Any, kind: Any, default: Any) -> Any:
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union \
        else (kind,)
    if value is None and type(None) in allowed:
        return None
    allowed = tuple(a for a in allowed if a is not type(None))
    example = default if default is not dataclasses.MISSING and default is not None else "..."
    if len(allowed) != 1:
        return value  # several types (a step count or "ddim25"): the class's check says what is valid
    kind = allowed[0]
    if kind is bool:
        return option_flag(name, value)
    if kind in (int, float):
        return option_number(name, value, kind, str(example))
    if kind is str and not isinstance(value, str):
        raise ArgenError(f"{name}={value!r} is not text; pass e.g. {name}={example}")
    return value
