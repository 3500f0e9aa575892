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


def data_version(name: str) -> str:
    """The ToyShapes version (accel/toy/data.py VERSIONS) a committed toy model was trained on: its record's
    data_version, "v1" for records written before there were versions. Toy FID compares a model with real
    images of its own version."""
    import json

    record = WEIGHTS_DIR / f"{name}.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} is missing: {name} has no committed toy weights")
    return json.loads(record.read_text()).get("data_version", "v1")
