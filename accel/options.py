"""Option values as the generators take them: from Python, YAML or a command line (where every value may
arrive as a string), checked once, with an error that names the option, its value and an example.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Mapping, Sequence

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
