"""The toy models: ToyShapes, the committed weights and their records, and the samplers' quality guards.

The guards generate a few thousand samples with fixed seeds and check toy FID and class-consistency
against thresholds measured on the committed weights (docs/BENCHMARKS.md, "Toy models"), with a margin.
A broken sampler (wrong CFG sign, off-by-one scale, a cache that leaks) moves these far past the margin.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from accel.toy import WEIGHTS_DIR, bundled_weights, data_version
from accel.toy.data import CLASSES, NUM_CLASSES, ToyShapes, to_uint8_images

RECORD_KEYS = ("what", "dataset", "train_seed", "command")  # every training record carries these

# Measured on the committed var_toy (3,100 steps in all: 1,600, then 1,500 more from those weights; 500 samples,
# class i mod 10, seeds 1,000,000 + i, CPU fp32, fp16 weights): accel=none toy FID 67.7, class-consistency 0.354;
# fastvar defaults 97.4 / 0.326 (chance: 0.100; random weights of the same structure: FID ~4000, 0.100; the
# 1,600-step weights: 121.4 / 0.214 and 137.1 / 0.204). Thresholds leave about 20% on FID and 0.05 on
# class-consistency.
GUARD_SAMPLES = 500
VAR_TOY_FID_MAX = 81.0
VAR_TOY_FASTVAR_FID_MAX = 117.0
VAR_TOY_CONSISTENCY_MIN = 0.27


def test_toyshapes_is_deterministic_by_seed_and_class_balanced():
    a_x, a_y = ToyShapes(seed=3, length=30).batch(0, 30)
    b_x, b_y = ToyShapes(seed=3, length=30).batch(0, 30)
    c_x, _ = ToyShapes(seed=4, length=30).batch(0, 30)
    assert a_x.shape == (30, 3, 32, 32) and a_x.dtype == torch.float32 and NUM_CLASSES == len(CLASSES) == 10
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, c_x)
    assert sorted(a_y.tolist()) == sorted(list(range(10)) * 3)
    assert float(a_x.min()) >= -1 and float(a_x.max()) <= 1
    # one sample does not depend on which batch it was rendered in
    x5, y5 = ToyShapes(seed=3, length=30)[5]
    assert torch.equal(x5, a_x[5]) and int(y5) == int(a_y[5])


def test_toyshapes_images_carry_high_frequency_detail():
    x, _ = ToyShapes(seed=0, length=50).batch(0, 50)
    img = to_uint8_images(x).astype(np.float64)
    # measured on these 50 images: 6.2 grey levels between horizontal neighbours, and 4.5 lost by 2x2
    # average pooling (the detail a downsampling-2 tokenizer has to keep)
    assert np.abs(np.diff(img, axis=2)).mean() > 4.5
    pooled = to_uint8_images(torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2))
    assert np.abs(img - pooled.astype(np.float64)).mean() > 3.0
    # the same class varies in colour and position
    same = img[np.arange(0, 50, 10)]
    assert np.abs(same[0] - same[1]).mean() > 10


def test_committed_weights_have_records_and_stay_small():
    files = sorted(WEIGHTS_DIR.glob("*.safetensors"))
    assert files, "no toy weights committed"
    assert sum(f.stat().st_size for f in files) <= 40 * 2 ** 20
    assert all(f.stat().st_size <= 5 * 2 ** 20 for f in files), [(f.name, f.stat().st_size) for f in files]
    for f in files:
        record = json.loads(f.with_suffix(".json").read_text())
        missing = [k for k in RECORD_KEYS if k not in record]
        assert not missing, f"{f.name}: record lacks {missing}"
        assert record["dataset"] == "ToyShapes" and record["command"].startswith("argen train-toy ")
        assert bundled_weights(f.stem) == f


def test_var_tokenizer_reconstructs_held_out_images():
    from accel.checkpoints import read_checkpoint
    from accel.tokenizers.msvq import build_tokenizer

    vae = build_tokenizer("var_vqvae_toy")
    vae.load_state_dict(read_checkpoint(bundled_weights("var_vqvae_toy")))
    vae.eval()
    # a seed no training used, of the version the tokenizer was trained on
    x, _ = ToyShapes(seed=9, length=100, version=data_version("var_vqvae_toy")).batch(0, 100)
    with torch.no_grad():
        rec = vae.fhat_to_img(vae.quantize(vae.quant_conv(vae.encoder(x)))[0])
    mse = float(((rec.clamp(-1, 1) - x) / 2).pow(2).mean())
    psnr = 10 * np.log10(1 / mse)
    assert psnr > 28.0, psnr  # 31.0 dB measured at training time (var_vqvae_toy.json)


def _guard(gen, n: int, fid_max: float, consistency_min: float) -> dict:
    from jobs.benches.toy import toy_quality

    q = toy_quality(gen, n, batch_size=250, seed_offset=1_000_000)  # seeds the bench table does not use
    assert q["class_consistency"] >= consistency_min, q
    assert q["fid"] <= fid_max, q
    return q


def _guard_pair(plain, accelerated, n: int, batch_size: int, fid_max: float, accelerated_fid_max: float,
                consistency_min: float) -> tuple[dict, dict]:
    """A model and its acceleration on the same guard seeds, interleaved: both reach their thresholds."""
    from jobs.benches.toy import toy_quality_interleaved

    q_plain, q_acc = toy_quality_interleaved([plain, accelerated], n, batch_size, seed_offset=1_000_000)
    assert q_plain["fid"] <= fid_max and q_plain["class_consistency"] >= consistency_min, q_plain
    assert q_acc["fid"] <= accelerated_fid_max and q_acc["class_consistency"] >= consistency_min, q_acc
    return q_plain, q_acc


@pytest.mark.heavy
def test_var_toy_samples_reach_quality_thresholds():
    from accel.api import load_generator

    gen = load_generator("var_toy", device="cpu")
    assert gen.image_size == 32 and gen.num_classes == 10
    _guard(gen, GUARD_SAMPLES, fid_max=VAR_TOY_FID_MAX, consistency_min=VAR_TOY_CONSISTENCY_MIN)


@pytest.mark.heavy
def test_var_toy_fastvar_defaults_keep_quality():
    from accel.api import load_generator

    gen = load_generator("var_toy", accel="fastvar", device="cpu")
    q = _guard(gen, GUARD_SAMPLES, fid_max=VAR_TOY_FASTVAR_FID_MAX, consistency_min=VAR_TOY_CONSISTENCY_MIN)
    assert q["flops_per_image"] > 0


@pytest.mark.heavy
def test_var_toy_guard_has_power():
    """The thresholds reject an untrained model of the same structure (the guard can fail)."""
    from accel.api import load_generator
    from jobs.benches.toy import toy_quality

    gen = load_generator("var_toy", device="cpu", random_init=True)
    q = toy_quality(gen, 200, batch_size=100)
    assert q["class_consistency"] < VAR_TOY_CONSISTENCY_MIN and q["fid"] > VAR_TOY_FID_MAX, q


# Measured on the committed llamagen_toy (300 samples, seeds 1,000,000 + i, cfg 4.0, CPU fp32): plain AR
# toy FID 55.0, class-consistency 0.207; LANTERN (drafter llamagen_toy_draft, k 10, delta 0.1; since the
# rejection rule zeroes a sampled draft's neighbours in q) 59.7 / 0.163 with 64.3 target forwards per image
# (plain AR: 256); random weights: FID ~3900, 0.100. Class-consistency of 300 samples moves by a few points
# (LANTERN's is 0.210 at 10,000). Thresholds leave about 20% on FID, 0.03 on class-consistency and 50% on
# the target forwards.
LLAMAGEN_GUARD_SAMPLES = 300
LLAMAGEN_TOY_FID_MAX = 66.0
LLAMAGEN_TOY_LANTERN_FID_MAX = 72.0
LLAMAGEN_TOY_CONSISTENCY_MIN = 0.13
LLAMAGEN_TOY_LANTERN_TARGET_FORWARDS_MAX = 96.0


@pytest.mark.heavy
def test_llamagen_toy_plain_and_lantern_reach_quality_thresholds():
    from accel.api import load_generator

    plain = load_generator("llamagen_toy", device="cpu")
    lantern = load_generator("llamagen_toy", accel="lantern", device="cpu", drafter="llamagen_toy_draft",
                             lantern_k=10, lantern_delta=0.1)
    _, q_lantern = _guard_pair(plain, lantern, LLAMAGEN_GUARD_SAMPLES, 150, LLAMAGEN_TOY_FID_MAX,
                               LLAMAGEN_TOY_LANTERN_FID_MAX, LLAMAGEN_TOY_CONSISTENCY_MIN)
    # the trained drafter is accepted often enough to save target forwards (64.4 measured)
    assert q_lantern["target_forwards_per_image"] <= LLAMAGEN_TOY_LANTERN_TARGET_FORWARDS_MAX, q_lantern


# Measured on the committed mar_toy (3,800 steps, then its head refined alone; 100 samples, seeds 1,000,000 + i,
# cfg 7.0, temperature 0.8, CPU fp32): accel=none toy FID 79.1, class-consistency 0.29; lazymar defaults 69.4 /
# 0.27 with 12 of 64 steps full and 2.34x fewer FLOPs (random weights, 40 samples: FID 3913, 0.10). Thresholds
# leave about 20% on FID and 0.05 on class-consistency. Only 100 samples (FID at 100 is coarse; on 200 the two
# read 74.1 and 71.8): MAR samples at ~0.65 s per image here, and the whole suite has to stay under 15 minutes.
MAR_GUARD_SAMPLES = 100
MAR_TOY_FID_MAX = 95.0
MAR_TOY_LAZYMAR_FID_MAX = 84.0
MAR_TOY_CONSISTENCY_MIN = 0.22


@pytest.mark.heavy
def test_mar_toy_plain_and_lazymar_reach_quality_thresholds():
    from accel.api import load_generator

    plain = load_generator("mar_toy", device="cpu")
    assert plain.image_size == 32 and plain.num_classes == 10
    lazy = load_generator("mar_toy", accel="lazymar", device="cpu")
    q_plain, q_lazy = _guard_pair(plain, lazy, MAR_GUARD_SAMPLES, 100, MAR_TOY_FID_MAX, MAR_TOY_LAZYMAR_FID_MAX,
                                  MAR_TOY_CONSISTENCY_MIN)
    # the caches are in use: upstream's schedule keeps 12 of 64 steps full
    assert q_lazy["full_steps"] == 12 and q_plain["flops_per_image"] > 2 * q_lazy["flops_per_image"], q_lazy


@pytest.mark.heavy
def test_mar_toy_guard_has_power():
    """The thresholds reject an untrained model of the same structure (the guard can fail). Random weights make
    noise at any step count, so 16 decoding and 25 diffusion steps (64 and 100 in the guard) keep it short."""
    from accel.api import load_generator
    from jobs.benches.toy import toy_quality

    gen = load_generator("mar_toy", device="cpu", random_init=True, num_iter=16, num_sampling_steps=25)
    q = toy_quality(gen, 40, batch_size=40)
    assert q["class_consistency"] < MAR_TOY_CONSISTENCY_MIN and q["fid"] > MAR_TOY_FID_MAX, q


def test_mar_tokenizer_reconstructs_held_out_images():
    from accel.tokenizers import build_tokenizer
    from accel.tokenizers.kl_vae import load_kl16

    vae = build_tokenizer("mar_kl_toy")
    load_kl16(vae, str(bundled_weights("mar_kl_toy")))
    vae.eval()
    # a seed no training used, of the version the tokenizer was trained on
    x, _ = ToyShapes(seed=9, length=100, version=data_version("mar_kl_toy")).batch(0, 100)
    with torch.no_grad():
        mean, _ = vae.encode(x)
        rec = vae.decode(mean)
    psnr = 10 * np.log10(1 / float(((rec.clamp(-1, 1) - x) / 2).pow(2).mean()))
    assert psnr > 29.0, psnr  # 32.5 dB measured at training time (mar_kl_toy.json)



def test_bench_toy_sampling_sweep_compares_options_on_the_same_seeds(capsys):
    """`argen bench toy model=... sweep=...`: one row per set of options; the same options give the same row
    (seeded), and options that change sampling change it."""
    from jobs.benches.toy import _parse_sweep, run

    assert _parse_sweep("temperature=0.8,cfg=3.0;top_k=5") == [{"temperature": 0.8, "cfg": 3.0}, {"top_k": 5}]
    assert _parse_sweep('[{}, {"accel": "fastvar", "prune_ratios": {"16": 0.5}}]')[1]["prune_ratios"] == {"16": 0.5}
    with pytest.raises(SystemExit, match="is not key=value"):
        _parse_sweep("cfg")
    run({"model": "var_toy", "samples": "20", "batch": "10",
         "sweep": '[{"cfg": 5.0}, {"cfg": 5.0}, {"cfg": 1.0}, {"accel": "fastvar", "cfg": 5.0}]'})
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| {")]
    assert len(rows) == 4
    fid = [float(r.split("|")[2]) for r in rows]
    flops_ratio = [float(r.split("|")[7].strip().rstrip("x")) for r in rows]
    assert fid[0] == fid[1] != fid[2] and fid[3] != fid[0], rows
    assert flops_ratio[:3] == [1.0, 1.0, 1.0] and flops_ratio[3] > 1.3, rows  # FastVAR defaults: 1.73x


def test_table_rows_end_with_the_seed_noise_row():
    """Every family's table ends with its baseline on other seeds: same sampler and cost, other samples, so its
    FID change is the seed noise the other rows' changes must exceed."""
    from jobs.benches.toy import SEED_NOISE_SETTING, settings_rows, toy_quality_interleaved

    rows = settings_rows("VAR", "var_toy", [("fastvar", "defaults", {})], n=20, batch_size=10)
    assert [r["setting"] for r in rows] == ["baseline", "defaults", SEED_NOISE_SETTING]
    base, fast, noise = rows
    assert base["fid_change"] == 0.0 and noise["flops_ratio"] == 1.0 and fast["flops_ratio"] > 1.3
    assert noise["fid"] != base["fid"]  # other seeds, other samples
    with pytest.raises(ValueError, match="2 seed offsets for 1 generators"):
        toy_quality_interleaved([object()], 10, 10, seed_offset=[0, 1])


def test_interrupted_toy_bench_goes_on_from_its_state(tmp_path):
    """state=DIR keeps the running scores after every batch; a run that stopped goes on with the batches
    they do not cover and ends with the scores of a run that never stopped; a state written by another run
    is refused."""
    from accel.api import ArgenError
    from jobs.benches.toy import toy_quality_interleaved, warm_generators

    settings = [{}, {"accel": "fastvar"}]
    gens = warm_generators("var_toy", settings)
    whole = toy_quality_interleaved(gens, 30, 10)  # no state, never stopped
    calls = []
    real = [g.generate for g in gens]

    def stop_at(seed_start):
        for g, generate in zip(gens, real):
            def wrapped(conds, seeds, generate=generate):
                if seeds[0] == seed_start:
                    raise KeyboardInterrupt  # the run is stopped while generating this batch
                calls.append(list(seeds))
                return generate(conds, seeds=seeds)
            g.generate = wrapped

    stop_at(20)
    with pytest.raises(KeyboardInterrupt):
        toy_quality_interleaved(gens, 30, 10, state_dir=tmp_path, settings=settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "scores.npz"]
    calls.clear()
    stop_at(None)
    again = toy_quality_interleaved(gens, 30, 10, state_dir=tmp_path, settings=settings)
    assert calls == [list(range(20, 30))] * 2  # only the batch not scored yet, once per generator
    for key in ("fid", "class_consistency", "flops_per_image", "samples"):
        assert [r[key] for r in again] == [r[key] for r in whole], key
    assert again[1]["kept_token_fraction_mean"] == whole[1]["kept_token_fraction_mean"] < 1
    assert again[0]["samples"] == 30 and again[1]["flops_per_image"] < again[0]["flops_per_image"]
    calls.clear()
    assert [r["fid"] for r in toy_quality_interleaved(gens, 30, 10, state_dir=tmp_path, settings=settings)] == \
        [r["fid"] for r in whole] and calls == []  # a finished state is only read
    with pytest.raises(ArgenError, match="n, settings"):
        toy_quality_interleaved(gens, 40, 10, state_dir=tmp_path, settings=[{}, {"accel": "fastvar", "cache_scale": 8}])
    with torch.no_grad():
        gens[1].model.head.bias.add_(0.01)  # as if the model had been retrained between the two sittings
    with pytest.raises(ArgenError, match=r"\(generators differ\)"):
        toy_quality_interleaved(gens, 30, 10, state_dir=tmp_path, settings=settings)


def test_toy_bench_weights_digest_covers_the_drafter():
    """A speculative row's state names its drafter's weights too: a retrained drafter makes other samples."""
    from jobs.benches.toy import weights_digest, warm_generators

    plain, spec = warm_generators("llamagen_toy", [{}, {"accel": "speculative", "drafter": "llamagen_toy_draft"}])
    before = weights_digest(spec)
    assert weights_digest(plain) != before  # same target and tokenizer, plus the drafter
    with torch.no_grad():
        next(spec.decoder.drafter.model.parameters()).add_(0.01)
    assert weights_digest(spec) != before


def test_toys_sheet_draws_a_labelled_row_per_class(tmp_path, capsys):
    """`argen bench toys_sheet` (docs/toys.png): every class a row, the toy's class-consistency printed."""
    from PIL import Image

    from jobs.benches import toys_sheet

    out = tmp_path / "toys.png"
    toys_sheet.run({"out": str(out), "per_class": "2", "models": "var_toy"})
    printed = capsys.readouterr().out
    assert "var_toy (committed): class-consistency" in printed and "on 20 samples" in printed
    assert all(f"{name} " in printed for name in CLASSES)
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.std() > 10  # a drawn figure, not a blank page
    with pytest.raises(SystemExit, match="unknown option"):
        toys_sheet.run({"models": "var_toy", "var_toy.tokeniser": "x"})
