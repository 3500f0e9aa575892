"""MAR: masked autoregressive image generation with a per-token diffusion head (Li et al., NeurIPS 2024).

configs.py    the released and test configs, sampling options
network.py    the release's encoder/decoder (state_dict layout of checkpoint-last.pth) and its sampling loop
diffloss.py   the release's diffusion head; diffusion.py its respaced DDPM
hooks.py      what an acceleration may attach to the sampler (a transformer cache, a head cache)
family.py     checked settings, strict loading of the released files, the generator
"""
from accel.families.mar.configs import CONFIGS, LATENT_SCALE, SAMPLING_OPTIONS, Sampling
from accel.families.mar.family import (MARGenerator, build_model, check_settings, conditions_of, latent_scale_for,
                                       make_generator, option_names, randomize_zero_init, stored_latent_scale)
from accel.families.mar.hooks import HeadCache, LayerHook, TransformerCache
from accel.families.mar.network import MAR

__all__ = ["CONFIGS", "LATENT_SCALE", "SAMPLING_OPTIONS", "Sampling", "MARGenerator", "build_model",
           "check_settings", "conditions_of", "latent_scale_for", "make_generator", "option_names",
           "randomize_zero_init", "stored_latent_scale", "HeadCache", "LayerHook", "TransformerCache", "MAR"]
