"""FastVAR: exactness at ratio 0, pivotal selection, cached restoration, KV cache contents, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel.api import ArgenError, load_generator
from accel.methods.fastvar import FastVAR, pivotal_token_indices, restore_from_cache

CONDS, SEEDS = [1, 500, 999], [7, 8, 9]


@pytest.fixture(scope="module")
def baseline():
    gen = load_generator("var_tiny", device="cpu", random_init=True)
    return gen.generate(CONDS, seeds=SEEDS)


@pytest.mark.parametrize("options", [
    {"prune_ratios": {13: 0.0, 16: 0.0}, "cache_scale": 10},
    {"prune_ratios": [0.0] * 10, "cfg_selection": "independent"},
    {"prune_ratios": {}, "layers": [1, 3]},
])
def test_ratio_zero_everywhere_is_bitwise_the_baseline(baseline, options):
    out = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, **options).generate(CONDS, seeds=SEEDS)
    assert np.array_equal(out.images, baseline.images)
    assert out.stats["flops"] == baseline.stats["flops"]
    assert out.stats["kept_token_fraction_mean"] == 1.0


def test_default_pruning_keeps_the_documented_fractions_and_saves_flops(baseline):
    gen = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True)
    out = gen.generate(CONDS, seeds=SEEDS)
    kept = out.stats["kept_token_fraction"]
    assert kept["13"] == pytest.approx((169 - int(169 * 0.5)) / 169)  # 85 of 169 tokens, every block
    assert kept["16"] == pytest.approx((256 - int(256 * 0.75)) / 256)  # 64 of 256
    assert all(kept[str(pn)] == 1.0 for pn in (1, 2, 3, 4, 5, 6, 8, 10))
    assert out.stats["flops_transformer"] < 0.6 * baseline.stats["flops_transformer"]
    assert out.stats["flops_tokenizer"] == baseline.stats["flops_tokenizer"]
    assert not np.array_equal(out.images, baseline.images)  # pruning is not a no-op


def test_layer_range_limits_pruning_to_those_blocks():
    gen = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, layers=[1, 3])
    kept = gen.generate([3], seeds=[0]).stats["kept_token_fraction"]
    # blocks 1 and 2 of 4 prune: half the (block, branch) pairs drop 192 of 256 tokens at scale 16
    assert kept["16"] == pytest.approx(1 - 0.5 * 192 / 256)


def test_only_kept_tokens_enter_the_kv_cache():
    gen = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, layers=[0, 2])
    run = gen.method.start(batch_rows=2)
    record = {}
    gen.model.autoregressive_infer_cfg(gen.vae.quantize, torch.tensor([4]), [torch.Generator().manual_seed(1)],
                                       token_hooks=run, record=record)
    before = sum(pn * pn for pn in gen.model.patch_nums[:8])
    keep13, keep16 = 169 - 84, 256 - 192
    assert record["kv_len"][8] == [before + keep13] * 2 + [before + 169] * 2  # pruned blocks 0, 1; full 2, 3
    assert record["kv_len"][9] == [before + keep13 + keep16] * 2 + [before + 169 + 256] * 2


def test_pivotal_tokens_are_those_farthest_from_the_mean():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8) * 0.01
    outliers = [[3, 7], [0, 15], [5, 6], [1, 2]]
    for r, cols in enumerate(outliers):
        x[r, cols] += 5.0
    idx = pivotal_token_indices(x, keep=2, shared_cfg_halves=False)
    assert idx.tolist() == outliers
    # shared: both CFG halves keep the positions ranked by the summed scores, row by row
    x2 = x.clone()
    x2[2, [5, 6]] = 0.0  # the uncond row of sample 0 has no outliers of its own
    x2[2, [3, 7]] += 1.0
    shared = pivotal_token_indices(x2, keep=2, shared_cfg_halves=True)
    assert shared[0].tolist() == shared[2].tolist() == [3, 7]
    assert shared[1].tolist() == shared[3].tolist()


def test_restoration_writes_kept_outputs_over_the_area_interpolated_cache():
    cached = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # 2x2 map, 3 channels
    idx = torch.tensor([[0, 8], [4, 5]])
    kept = torch.full((2, 2, 3), -1.0)
    full = restore_from_cache(kept, idx, cached, cached_side=2, side=3)
    expect = F.interpolate(cached.view(2, 2, 2, 3).permute(0, 3, 1, 2), size=(3, 3), mode="area")
    expect = expect.permute(0, 2, 3, 1).reshape(2, 9, 3)
    for r in range(2):
        for p in range(9):
            want = torch.full((3,), -1.0) if p in idx[r].tolist() else expect[r, p]
            assert torch.equal(full[r, p], want)


def test_skip_last_scales_is_a_separate_option_and_off_by_default():
    assert FastVAR((1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 4).skip_last_scales == 0
    gen = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, prune_ratios={},
                         skip_last_scales=2)
    out = gen.generate([3], seeds=[0])
    assert out.stats["scales_run"] == 8
    assert out.stats["kept_token_fraction"]["16"] == 0.0 and out.stats["kept_token_fraction"]["10"] == 1.0
    full = load_generator("var_tiny", device="cpu", random_init=True).generate([3], seeds=[0])
    assert out.stats["flops_transformer"] < 0.5 * full.stats["flops_transformer"]


def test_512_schedule_defaults():
    m = FastVAR((1, 2, 3, 4, 6, 9, 13, 18, 24, 32), 36)
    assert m.options()["prune_ratios"] == {24: 0.5, 32: 0.75} and m.options()["cache_scale"] == 18


@pytest.mark.parametrize("options, match", [
    ({"prune_ratios": {13: -0.1}}, r"prune ratio -0.1 at scale 13 is outside \[0, 1\)"),
    ({"prune_ratios": {14: 0.5}}, "scale 14, which is not in the schedule"),
    ({"prune_ratios": [0.5, 0.5]}, "one per scale"),
    ({"prune_ratios": {13: 0.5}, "cache_scale": 16}, r"scales \[13\] are pruned but not after cache_scale=16"),
    ({"prune_ratios": {13: 0.5}, "cache_scale": 7}, "cache_scale=7 is not a scale"),
    ({"layers": [2, 9]}, r"layers=\[2, 9\]"),
    ({"skip_last_scales": 10}, "skip_last_scales=10"),
    ({"cfg_selection": "random"}, "cfg_selection='random'"),
    ({"prune_ratio": 0.5}, "unknown option"),
    ({"prune_ratios": 0.5}, r"prune_ratios=0.5: expected a mapping \{side: fraction dropped\}, e.g. prune_ratios=\{13: 0.5, 16: 0.75\}"),
    ({"prune_ratios": {13: "x"}}, r"prune_ratios\[13\]='x' is not a number"),
    ({"prune_ratios": {"thirteen": 0.5}}, r"a prune_ratios key='thirteen' is not a number"),
    ({"layers": [1, 2, 3]}, r"layers=\[1, 2, 3\] is not a block range; pass \[start, end\)"),
    ({"layers": 4}, r"layers=4 is not a block range"),
    ({"layers": [0, 1.5]}, r"layers=1.5 is not a whole number"),
    ({"skip_last_scales": "a"}, "skip_last_scales='a' is not a number; pass e.g. skip_last_scales=2"),
])
def test_bad_fastvar_options(options, match):
    with pytest.raises(ArgenError, match=match):
        load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, **options)


def test_cache_bench_restores_what_fastvar_computes_at_its_first_pruned_sublayer(monkeypatch):
    """jobs/benches/fastvar_cache restores dropped tokens from the baseline's records; at the first pruned
    sub-layer (block 0's attention at scale 13) FastVAR's input is still the baseline's, so the two must
    agree on the dropped tokens (the kept ones differ: FastVAR's attend to the kept tokens of the scale only)."""
    from accel.methods import fastvar
    from jobs.benches.fastvar_cache import BranchRecorder, restoration_errors, restore_dropped

    seen = {}
    real_branch = fastvar.BlockTokens.branch

    def spy(self, name, x, fn):
        out = real_branch(self, name, x, fn)
        if self.scale.keep is not None:
            seen.setdefault((self.scale.pn, self.block_idx, name), out)
        return out

    monkeypatch.setattr(fastvar.BlockTokens, "branch", spy)
    labels, gens = torch.tensor([4, 9]), lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]
    fast = load_generator("var_tiny", accel="fastvar", device="cpu", random_init=True, cache_scale=8)
    fast.model.autoregressive_infer_cfg(fast.vae.quantize, labels, gens(), token_hooks=fast.method.start(4))
    base = load_generator("var_tiny", device="cpu", random_init=True)
    rec = BranchRecorder()
    base.model.autoregressive_infer_cfg(base.vae.quantize, labels, gens(), token_hooks=rec.start(4))
    x, full = rec.records[(13, 0, "attn")]
    restored, dropped = restore_dropped(full, x, 169 - 84, rec.records[(8, 0, "attn")][1], 8, 13)
    assert dropped.sum(1).tolist() == [84] * 4
    torch.testing.assert_close(restored[dropped], seen[(13, 0, "attn")][dropped])
    torch.testing.assert_close(restored[~dropped], full[~dropped])
    assert not torch.allclose(restored[dropped], full[dropped], atol=1e-3)  # restoring is not the full computation
    errors = restoration_errors(rec.records, {13: 0.5}, [8, 10])
    assert set(errors) == {(13, c, i, b) for c in (8, 10) for i in range(4) for b in ("attn", "ffn")}
    err, energy, stream = errors[(13, 8, 0, "attn")]
    assert err == pytest.approx((restored - full).square().sum().item(), rel=1e-5)
    assert 0 < err and 0 < energy and 0 < stream


def test_cache_bench_prints_one_row_per_pruned_and_cache_scale(capsys):
    from jobs.benches.fastvar_cache import run

    run({"model": "var_toy", "samples": "4", "batch": "4", "cache_scales": "8,10,13"})
    rows = [r.split("|")[1:-1] for r in capsys.readouterr().out.splitlines() if r.startswith("| 1")]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(13, 8), (13, 10), (16, 8), (16, 10), (16, 13)]
    for r in rows:
        rel, kl, same = float(r[2]), float(r[6]), float(r[7])
        assert rel > 0 and kl > 0 and 0 < same < 1  # pruning changes the distribution, not every token
    with pytest.raises(ArgenError, match=r"scales \[12\] are not in"):
        run({"model": "var_toy", "samples": "2", "cache_scales": "12"})
