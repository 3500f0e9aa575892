"""Image tokenizers in the official state_dict layout: `var_vqvae`, `llamagen_vq16`, `mar_kl16`."""
from __future__ import annotations

import importlib

import torch

# tokenizer name -> module that builds it
TOKENIZERS = {
    "var_vqvae": "accel.tokenizers.msvq",
    "llamagen_vq16": "accel.tokenizers.vq",
    "mar_kl16": "accel.tokenizers.kl_vae",
    "var_vqvae_tiny": "accel.tokenizers.msvq",  # narrow, same structure: tests and CPU benchmarks
    "var_vqvae_toy": "accel.tokenizers.msvq",  # trained on ToyShapes (accel/toy)
    "mar_kl_toy": "accel.tokenizers.kl_vae",  # trained on ToyShapes (accel/toy)
    "llamagen_vq_toy": "accel.tokenizers.vq",  # trained on ToyShapes (accel/toy)
}


def build_tokenizer(name: str, **kwargs) -> torch.nn.Module:
    from accel.errors import ArgenError

    if name not in TOKENIZERS:
        raise ArgenError(f"unknown tokenizer {name!r}; known: {sorted(TOKENIZERS)}")
    return importlib.import_module(TOKENIZERS[name]).build_tokenizer(name, **kwargs)
