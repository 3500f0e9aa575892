"""`accel.models.build_model(name)`: the generator network of any model name, in the official state_dict
layout (buildable under torch.device("meta")). The families themselves are packages of accel/families/;
names resolve through accel.registry.
"""
from __future__ import annotations

import torch

from accel.registry import (FAMILIES, check_settings, conditions_of, eval_image_size_of, family_module, family_of,
                            known_model_names)

__all__ = ["FAMILIES", "build_model", "check_settings", "conditions_of", "eval_image_size_of", "family_of",
           "known_model_names"]


def build_model(name: str) -> torch.nn.Module:
    """The generator network with the official keys and shapes (works under torch.device('meta'))."""
    return family_module(family_of(name)).build_model(name)
