"""LlamaGen (Sun et al. 2024): next-token AR over VQ-16 codes, class-to-image and text-to-image.

configs.py  the released and test configs (model names, released files), sampling options
network.py  the release's gpt.py (state_dict layout of c2i_*.pt / t2i_*.pt), with its per-row KV cache
sample.py   the release's sampling loop (CFG by batch doubling, top-k / top-p, cfg_interval)
hooks.py    what an acceleration may attach (a Decoder that replaces the token loop)
family.py   checked settings, strict loading of the released files, the generator
"""
from accel.families.llamagen.configs import (CONFIGS, SAMPLING_OPTIONS, TINY_TOKENIZER, LlamaGenConfig,
                                            SamplingOptions, get_config, released_file)
from accel.families.llamagen.family import (LlamaGenGenerator, build_model, bundled_checkpoint, check_settings,
                                           conditions_of, decode_tokens, eval_image_size, load_model,
                                           make_generator, option_names)
from accel.families.llamagen.hooks import Decoder
from accel.families.llamagen.network import KVCache, ModelArgs, TextCondition, Transformer
from accel.families.llamagen.sample import (CFGModel, cfg_rows, generate_tokens, guided_logits, logits_to_probs, pick,
                                           top_k_top_p_filtering)

__all__ = ["CONFIGS", "SAMPLING_OPTIONS", "TINY_TOKENIZER", "LlamaGenConfig", "SamplingOptions", "get_config",
           "released_file", "LlamaGenGenerator", "build_model", "bundled_checkpoint", "check_settings",
           "conditions_of", "decode_tokens", "eval_image_size", "load_model", "make_generator", "option_names",
           "Decoder", "KVCache", "ModelArgs", "TextCondition", "Transformer", "CFGModel", "cfg_rows",
           "generate_tokens", "guided_logits", "logits_to_probs", "pick", "top_k_top_p_filtering"]
