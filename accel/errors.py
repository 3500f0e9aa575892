"""The one error type for bad input: it names the value, what was expected and how to fix it."""
from __future__ import annotations


class ArgenError(ValueError):
    """A bad input, reported with the value, what was expected and how to fix it."""
