"""VAR: official layout, checkpoint loading, the sampling loop, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accel.api import ArgenError, load_generator
from accel.models import build_model, known_model_names
from accel.families import var as V
from accel.tokenizers import build_tokenizer

OFFICIAL = {"var_d16": (16, 1024, 680, False), "var_d20": (20, 1280, 680, False), "var_d24": (24, 1536, 680, False),
            "var_d30": (30, 1920, 680, False), "var_d36": (36, 2304, 2240, True)}
# parameter counts from the VAR README / paper (approximate)
PARAMS = {"var_d16": 310e6, "var_d20": 600e6, "var_d24": 1.0e9, "var_d30": 2.0e9, "var_d36": 2.3e9}


def documented_var_keys(depth: int, C: int, L: int, shared: bool) -> dict[str, tuple]:
    """The state_dict of var_dXX.pth as documented (spec section 1.5), written out independently."""
    keys = {"pos_start": (1, 1, C), "pos_1LC": (1, L, C), "lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L),
            "word_embed.weight": (C, 32), "word_embed.bias": (C,), "class_emb.weight": (1001, C),
            "lvl_embed.weight": (10, C), "head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
            "head.weight": (4096, C), "head.bias": (4096,)}
    H = depth
    for n in range(depth):
        p = f"blocks.{n}."
        keys.update({p + "attn.scale_mul_1H11": (1, H, 1, 1), p + "attn.q_bias": (C,), p + "attn.v_bias": (C,),
                     p + "attn.zero_k_bias": (C,), p + "attn.mat_qkv.weight": (3 * C, C),
                     p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,),
                     p + "ffn.fc1.weight": (4 * C, C), p + "ffn.fc1.bias": (4 * C,),
                     p + "ffn.fc2.weight": (C, 4 * C), p + "ffn.fc2.bias": (C,)})
        if shared:
            keys[p + "ada_gss"] = (1, 1, 6, C)
        else:
            keys[p + "ada_lin.1.weight"] = (6 * C, C)
            keys[p + "ada_lin.1.bias"] = (6 * C,)
    if shared:
        keys["shared_ada_lin.1.weight"] = (6 * C, C)
        keys["shared_ada_lin.1.bias"] = (6 * C,)
    return keys


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_sizes_have_documented_keys_and_shapes(name):
    depth, C, L, shared = OFFICIAL[name]
    with torch.device("meta"):
        model = build_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == documented_var_keys(depth, C, L, shared)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - PARAMS[name]) / PARAMS[name] < 0.06, n_params


def test_vqvae_layout():
    with torch.device("meta"):
        vae = build_tokenizer("var_vqvae")
    sd = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert sd["quantize.embedding.weight"] == (4096, 32)
    assert sd["quantize.ema_vocab_hit_SV"] == (10, 4096)
    for i in range(4):
        assert sd[f"quantize.quant_resi.qresi_ls.{i}.weight"] == (32, 32, 3, 3)
        assert sd[f"quantize.quant_resi.qresi_ls.{i}.bias"] == (32,)
    assert sd["quant_conv.weight"] == sd["post_quant_conv.weight"] == (32, 32, 3, 3)
    assert sd["encoder.conv_in.weight"] == (160, 3, 3, 3)
    assert sd["encoder.conv_out.weight"] == (32, 640, 3, 3)
    assert sd["decoder.conv_in.weight"] == (640, 32, 3, 3)
    assert sd["decoder.conv_out.weight"] == (3, 160, 3, 3)
    # attention only at the lowest resolution (two in the encoder level, three in the decoder level) + mid
    assert sd["encoder.down.4.attn.1.qkv.weight"] == (1920, 640, 1, 1)
    assert sd["decoder.up.4.attn.2.proj_out.weight"] == (640, 640, 1, 1)
    assert not any(k.startswith("encoder.down.3.attn") for k in sd)
    assert "encoder.down.2.block.0.nin_shortcut.weight" in sd and "encoder.down.1.block.0.nin_shortcut.weight" not in sd
    assert "encoder.down.4.downsample.conv.weight" not in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert vae.downsample == 16 and vae.image_size == 256


def test_phi_choice_follows_official_ticks():
    vae = build_tokenizer("var_vqvae_tiny")
    q = vae.quantize
    # K=4 phis with ticks 1/12, 13/36, 23/36, 11/12: scale si uses the tick nearest si/9
    chosen = [list(q.quant_resi.qresi_ls).index(q.phi(si)) for si in range(10)]
    assert chosen == sorted(chosen)
    assert chosen[:2] == [0, 0] and chosen[3:5] == [1, 1] and chosen[5:7] == [2, 2] and chosen[8:] == [3, 3]


@pytest.fixture(scope="module")
def tiny():
    return load_generator("var_tiny", device="cpu", random_init=True, top_k=1)  # greedy: deterministic tokens


def test_kv_cached_generation_matches_full_forward_with_block_causal_mask(tiny):
    model, quant = tiny.model, tiny.vae.quantize
    labels = torch.tensor([3, 77])
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    record = {}
    with torch.no_grad():
        model.autoregressive_infer_cfg(quant, labels, gens, cfg=1.5, top_k=1, top_p=1.0, record=record)
        x_in = quant.idxBl_to_var_input(record["idx_Bl"])
        cond = model(labels, x_in)
        uncond = model(torch.full_like(labels, model.num_classes), x_in)
    S = len(model.patch_nums)
    for si, (bg, ed) in enumerate(model.begin_ends):
        t = 1.5 * si / (S - 1)
        full = (1 + t) * cond[:, bg:ed] - t * uncond[:, bg:ed]
        torch.testing.assert_close(full, record["logits"][si], rtol=1e-4, atol=1e-4)
        assert torch.equal(full.argmax(-1), record["idx_Bl"][si])
    # every block's cache holds exactly the tokens of the scales seen so far
    cum = np.cumsum([pn * pn for pn in model.patch_nums])
    assert [kv[0] for kv in record["kv_len"]] == list(cum)


def test_more_smooth_mixes_only_the_tokens_that_survive_top_k(tiny):
    """more_smooth's Gumbel mixture is over the filtered logits (upstream filters in place first): with top-k 1
    the only surviving token gets all the weight, so f_hat is the greedy one exactly."""
    model, quant = tiny.model, tiny.vae.quantize
    labels = torch.tensor([3, 77])
    with torch.no_grad():
        greedy = model.autoregressive_infer_cfg(quant, labels, [torch.Generator().manual_seed(s) for s in (0, 1)],
                                                cfg=1.5, top_k=1)
        smooth = model.autoregressive_infer_cfg(quant, labels, [torch.Generator().manual_seed(s) for s in (0, 1)],
                                                cfg=1.5, top_k=1, more_smooth=True)
    torch.testing.assert_close(smooth, greedy, rtol=1e-5, atol=1e-5)


def test_same_seed_same_image_and_batch_independence():
    gen = load_generator("var_tiny", device="cpu", random_init=True)
    a = gen.generate([5, 9, 5], seeds=[11, 12, 13])
    again = gen.generate([5, 9, 5], seeds=[11, 12, 13])
    permuted = gen.generate([9, 5, 5], seeds=[12, 13, 11])
    mates = gen.generate([5, 1, 2], seeds=[11, 99, 98])
    assert a.images.shape == (3, 256, 256, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, again.images)
    # a sample's randomness is its own: neither its position nor its batch-mates' seeds change it
    # (a different batch size may, through floating-point effects of the matmul shapes)
    assert np.array_equal(a.images[0], permuted.images[2]) and np.array_equal(a.images[1], permuted.images[0])
    assert np.array_equal(a.images[0], mates.images[0])
    assert np.abs(a.images[0].astype(int) - a.images[2]).mean() > 1.0  # a different seed is a different sample
    assert a.stats["images"] == 3 and a.stats["seconds"] > 0
    assert a.stats["flops"] == pytest.approx(
        a.stats["flops_transformer"] + a.stats["flops_head"] + a.stats["flops_tokenizer"])


def test_release_draw_reproduces_the_release_sampler_for_a_seed():
    """draw=release: every scale's tokens are torch.multinomial over the filtered probabilities of all the
    scale's tokens at once, on the generator seeded with the sample's seed (sample_with_top_k_top_p_ at
    batch 1); with a batch, each row's tokens are those of the row alone."""
    gen = load_generator("var_tiny", device="cpu", random_init=True, draw="release", top_k=600, top_p=0.9)
    model, quant = gen.model, gen.vae.quantize
    record = {}
    with torch.no_grad():
        model.autoregressive_infer_cfg(quant, torch.tensor([3]), [torch.Generator().manual_seed(21)], cfg=1.5,
                                       top_k=600, top_p=0.9, draw="release", record=record)
    rng = torch.Generator().manual_seed(21)
    for logits, idx in zip(record["logits"], record["idx_Bl"]):
        probs = V.network.filter_top_k_top_p(logits, top_k=600, top_p=0.9).softmax(-1)
        ref = torch.multinomial(probs.view(-1, probs.shape[-1]), 1, replacement=True, generator=rng)
        assert torch.equal(idx.view(-1, 1), ref)
    a = gen.generate([3, 5], seeds=[21, 22])
    b = gen.generate([5, 3], seeds=[22, 21])
    default = load_generator("var_tiny", device="cpu", random_init=True, top_k=600, top_p=0.9).generate(
        [3, 5], seeds=[21, 22])
    assert np.array_equal(a.images[0], b.images[1]) and np.array_equal(a.images[1], b.images[0])
    assert not np.array_equal(a.images, default.images)


def test_random_init_is_identical_across_loads():
    g1 = load_generator("var_tiny", device="cpu", random_init=True)
    g2 = load_generator("var_tiny", device="cpu", random_init=True)
    for (k, v1), v2 in zip(g1.model.state_dict().items(), g2.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    for (k, v1), v2 in zip(g1.vae.state_dict().items(), g2.vae.state_dict().values()):
        assert torch.equal(v1, v2), k


def test_analytic_flops_match_torch_flop_counter(tiny):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from accel.flops import FlopCounter, counting

    counter = FlopCounter()
    gens = [torch.Generator().manual_seed(0)]
    # the math backend spells attention out as matmuls, which the counter sees (the CPU kernel it does not)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as measured, \
            counting(counter):
        tiny.model.autoregressive_infer_cfg(tiny.vae.quantize, torch.tensor([1]), gens, top_k=1)
    # ours leaves out the AdaLN projections and the phi convolutions (under 2% here)
    assert counter.total == pytest.approx(measured.get_total_flops(), rel=0.02)
    assert counter.total < measured.get_total_flops()


def test_checkpoint_roundtrip_and_strict_errors(tmp_path, tiny):
    ckpt, vae_ckpt = tmp_path / "var_tiny.pth", tmp_path / "vae.pth"
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    torch.save(sd, ckpt)
    vae_sd = {k: v.clone() for k, v in tiny.vae.state_dict().items()}
    vae_sd["quantize.ema_vocab_hit_SV"] = torch.zeros(7, 4096)  # trained under another schedule: tolerated
    torch.save(vae_sd, vae_ckpt)
    loaded = load_generator("var_tiny", device="cpu", checkpoint=str(ckpt), tokenizer_checkpoint=str(vae_ckpt), top_k=1)
    for k, v in sd.items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    out1 = loaded.generate([4], seeds=[3])
    out2 = tiny.generate([4], seeds=[3])
    assert np.array_equal(out1.images, out2.images)

    broken = dict(sd)
    broken.pop("head.bias")
    broken["blocks.0.attn.extra"] = torch.zeros(1)
    broken["pos_start"] = torch.zeros(1, 2, 128)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ArgenError) as e:
        load_generator("var_tiny", device="cpu", checkpoint=str(tmp_path / "broken.pth"),
                       tokenizer_checkpoint=str(vae_ckpt))
    msg = str(e.value)
    assert "head.bias" in msg and "blocks.0.attn.extra" in msg and "pos_start (1, 2, 128)" in msg


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ArgenError, match="weights-only"):
        load_generator("var_tiny", device="cpu", checkpoint=str(tmp_path / "evil.pth"), random_init=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "var_d17"}, "known models: .*var_d16"),
    ({"cfg": -0.5}, "cfg=-0.5"),
    ({"top_p": 0.0}, r"top_p=0.0 is outside \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p=1.5"),
    ({"top_k": 5000}, r"top_k=5000 .*this model's default: 900"),
    ({"top_k": "many"}, r"top_k='many' is not a number; pass e.g. top_k=900"),
    ({"cfg": [1.5]}, r"cfg=\[1.5\] is not a number"),
    ({"more_smooth": "yes"}, r"more_smooth='yes' is not true or false"),
    ({"name": "var_toy", "top_k": 600}, r"top_k=600 is outside \[0, 512\].*this model's default: 0"),
    ({"random_init": False}, "no checkpoint"),
    ({"accel": "lazymar"}, "does not apply to var_tiny"),
    ({"accel": "warp"}, "unknown accel 'warp'"),
    ({"prune_ratios": {13: 0.5}}, "unknown option"),
    ({"accel": "fastvar", "prune_ratios": {13: 1.0}}, r"prune ratio 1.0 at scale 13 is outside \[0, 1\)"),
    ({"accel": "fastvar", "checkpoint": "/nonexistent/var.pth"}, "does not exist"),
])
def test_bad_input_is_rejected_before_generating(kwargs, match):
    args = {"name": "var_tiny", "device": "cpu", "random_init": True, **kwargs}
    with pytest.raises(ArgenError, match=match):
        load_generator(**args)


def test_bad_conditions(tiny):
    with pytest.raises(ArgenError, match=r"class id 1000 is outside \[0, 1000\)"):
        tiny.generate([1000])
    with pytest.raises(ArgenError, match="class id -1"):
        tiny.generate([-1])
    with pytest.raises(ArgenError, match="not a class id"):
        tiny.generate(["a cat"])
    with pytest.raises(ArgenError, match="2 conditions but 1 seeds"):
        tiny.generate([1, 2], seeds=[0])
    for seeds, shown in (([0, 1.7], r"seeds\[1\]=1.7"), (["a"], r"seeds\[0\]='a'"), ([-1], r"seeds\[0\]=-1"),
                         ([1 << 64], r"seeds\[0\]=18446744073709551616")):
        with pytest.raises(ArgenError, match=shown + r"; expected an integer in \[0, 2\*\*64\)"):
            tiny.generate([1] * len(seeds), seeds=seeds)


def test_known_names_include_every_official_size():
    names = known_model_names()
    for n in [*OFFICIAL, "var_tiny"]:
        assert n in names
    assert V.CONFIGS["var_d36"].shared_aln and V.CONFIGS["var_d36"].patch_nums[-1] == 32


def test_training_checkpoint_with_args_namespace_loads(tmp_path, tiny):
    """Released training files (MAR, LlamaGen) hold an argparse.Namespace beside the weights."""
    import argparse

    from accel.checkpoints import read_checkpoint, unwrap_state_dict

    sd = tiny.model.state_dict()
    torch.save({"model": sd, "epoch": 3, "args": argparse.Namespace(depth=4, device="cuda", pn=(1, 2))},
               tmp_path / "train.pth")
    got = unwrap_state_dict(read_checkpoint(tmp_path / "train.pth"))
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
