"""precision= (issue #23): auto is the release's precision on CUDA and fp32 on CPU; bf16 / fp16 on request, as
autocast (VAR, MAR) or as cast weights and KV caches (LlamaGen, with its drafters); a bad value is refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accel.api import ArgenError, load_generator
from accel.generator import resolve_precision

SMALL = {"mar_tiny": {"num_iter": 2, "num_sampling_steps": "2"}, "llamagen_tiny": {}}


def test_auto_is_the_release_precision_on_cuda_and_fp32_on_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_precision("auto", cuda, "bf16") == "bf16" and resolve_precision("auto", cpu, "bf16") == "fp32"
    assert resolve_precision("FP16", cpu, "bf16") == "fp16"
    with pytest.raises(ArgenError, match=r"precision='half'; expected auto .*fp32, bf16 or fp16"):
        load_generator("var_tiny", device="cpu", random_init=True, precision="half")
    from accel.families.llamagen.family import LlamaGenGenerator
    from accel.families.mar.family import MARGenerator
    from accel.families.var.family import VARGenerator

    # the releases' sampling scripts: VAR's demo and MAR's evaluation autocast to fp16, LlamaGen casts to bf16
    assert (VARGenerator.release_precision, MARGenerator.release_precision) == ("fp16", "fp16")
    assert LlamaGenGenerator.release_precision == "bf16" and not LlamaGenGenerator.precision_by_autocast


@pytest.mark.parametrize("name", ["llamagen_tiny", pytest.param("mar_tiny", marks=pytest.mark.heavy)])
def test_cpu_default_is_exact_fp32_and_lower_precision_runs_close(name):
    exact = load_generator(name, device="cpu", random_init=True, **SMALL[name])
    assert exact.precision == "fp32"
    low = load_generator(name, device="cpu", random_init=True, precision="bf16", **SMALL[name])
    assert low.precision == "bf16"
    a = exact.generate([1, 2], seeds=[3, 4]).images
    b = low.generate([1, 2], seeds=[3, 4]).images
    assert b.shape == a.shape and b.dtype == np.uint8
    if name == "llamagen_tiny":  # weights and the KV cache in bf16, the logits in fp32
        assert next(low.model.parameters()).dtype == torch.bfloat16
    else:
        assert next(low.model.parameters()).dtype == torch.float32  # autocast: fp32 weights
    assert not np.array_equal(a, b)  # it really ran in another precision


def test_var_samples_under_autocast():
    """VAR's scales under the generator's autocast (its VQ-VAE decode at 256 px is slow in emulated bf16 on a
    CPU, so the transformer's first scales stand for the whole call here)."""
    low = load_generator("var_tiny", device="cpu", random_init=True, precision="bf16")
    assert low.precision == "bf16" and next(low.model.parameters()).dtype == torch.float32
    seen: list[torch.dtype] = []
    hook = low.model.blocks[0].ffn.fc1.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    with torch.inference_mode(), low.autocast():
        low.model.autoregressive_infer_cfg(low.vae.quantize, torch.tensor([1]), [torch.Generator().manual_seed(0)],
                                           num_scales=4)
    hook.remove()
    assert seen == [torch.bfloat16] * 4


@pytest.mark.parametrize("options", [{"drafter": "llamagen_tiny_draft"}, pytest.param(
    {"drafter": "eagle", "tree_tokens": 6, "tree_depth": 2, "tree_top_k": 3}, marks=pytest.mark.heavy)])
def test_llamagen_drafters_run_in_the_target_precision(options):
    gen = load_generator("llamagen_tiny", accel="lantern", device="cpu", random_init=True, precision="bf16",
                         **options)
    out = gen.generate([1], seeds=[0])
    assert out.images.shape == (1, 256, 256, 3) and out.stats["accepted_length"] >= 1


def test_text_to_image_features_follow_the_weights_precision():
    from accel.families.llamagen import network as gpt

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = gpt.Transformer(gpt.ModelArgs(n_layer=1, n_head=2, dim=32, multiple_of=32, model_type="t2i",
                                              cls_token_num=4, caption_dim=8, block_size=16)).eval()
    model.init_weights(zero_output=False)
    model = model.to(torch.bfloat16)
    cond = gpt.TextCondition(torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
    feats, mask = model.condition_rows(cond, with_null=True)
    assert feats.dtype == torch.bfloat16 and feats.shape == (4, 4, 8) and mask.shape == (4, 4)


def test_precision_is_part_of_the_plan_only_when_set():
    from omegaconf import OmegaConf

    from pipeline.plan import build_plan

    base = OmegaConf.load("jobs/conf/config.yaml")
    base.model = OmegaConf.create({"name": "var_toy", "options": {}})
    base.accel = OmegaConf.create({"name": "none", "options": {}})
    auto = build_plan(base, 10, False)
    again = build_plan(OmegaConf.merge(base, {"precision": "auto"}), 10, False)
    bf16 = build_plan(OmegaConf.merge(base, {"precision": "bf16"}), 10, False)
    assert auto.hash == again.hash != bf16.hash and bf16.settings["precision"] == "bf16"
