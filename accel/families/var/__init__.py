"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., NeurIPS 2024).

configs.py  the released and test configs, sampling options
network.py  the release's network (state_dict layout of var_d16.pth ...) and its sampling loop
hooks.py    what an acceleration may attach to the sampler (token hooks per scale and block)
family.py   checked settings, strict loading of the released files, the generator
"""
from accel.families.var.configs import CONFIGS, SAMPLING_OPTIONS, Sampling, VARConfig
from accel.families.var.family import (VARGenerator, build_model, check_settings, conditions_of, config_with,
                                       make_generator, option_names)
from accel.families.var.hooks import ScaleHooks, TokenHook, TokenHooks
from accel.families.var.network import VAR

__all__ = ["CONFIGS", "SAMPLING_OPTIONS", "Sampling", "VARConfig", "VARGenerator", "build_model", "check_settings",
           "conditions_of", "config_with", "make_generator", "option_names", "ScaleHooks", "TokenHook", "TokenHooks",
           "VAR"]
