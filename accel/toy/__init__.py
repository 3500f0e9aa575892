"""argen's own small trained models: the ToyShapes data set, the toy classifier, and the weights of
the toy tokenizers and generators (weights/<name>.safetensors, each with a <name>.json record of its
training config and data-set seed, made by `argen train-toy`)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_weights(name: str) -> Path | None:
    """The committed safetensors file of a toy model or tokenizer, if it has been trained."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None
