"""LazyMAR: exact when refreshing every step, its schedules, its savings, its counters and bad input."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from accel import flops as fl
from accel.api import ArgenError, load_generator, seeded_generators
from accel.methods.lazymar import LazyMAR
from accel.families import mar

SAMPLING = dict(num_iter=8, num_sampling_steps=4, cfg=3.0)
EVERY_STEP = dict(refresh_interval=1, head_refresh_interval=1)
ALONE = {
    "token": dict(token_cache=True, condition_cache=False, head_cache=False),
    "condition": dict(token_cache=False, condition_cache=True, head_cache=False),
    "head": dict(token_cache=False, condition_cache=False, head_cache=True),
    "all": dict(token_cache=True, condition_cache=True, head_cache=True),
}
# upstream's RETAIN_RATIO_SCHEDULE for 64 steps, entry by entry
UPSTREAM_RETAIN = [1.0] * 20 + [0.6] + [0.5] * 4 + [0.4] * 5 + [0.15] * 5 + [0.12] * 5 + [0.05] * 24


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tokens_of(gen, conditions, seeds):
    """The generated latents (before the tokenizer) and the method's counters."""
    caches = gen.method.new_caches(len(seeds)) if gen.method is not None else (None, None)
    with torch.inference_mode():
        toks = gen.model.sample_tokens(torch.tensor(conditions), seeded_generators(seeds, gen.device),
                                       num_iter=gen.num_iter, cfg=gen.cfg, cfg_schedule=gen.cfg_schedule,
                                       temperature=gen.temperature, num_sampling_steps=gen.num_sampling_steps,
                                       cache=caches[0], head_cache=caches[1])
    return toks, (gen.method.stats(*caches) if gen.method is not None else {})


@pytest.fixture(scope="module")
def baseline():
    gen = load_generator("mar_tiny", device="cpu", random_init=True, **SAMPLING)
    return gen, tokens_of(gen, [3, 500, 999], [0, 1, 2])[0]


@pytest.mark.parametrize("which", list(ALONE))
def test_refresh_every_step_is_bitwise_the_baseline(baseline, which):
    gen0, ref = baseline
    gen = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, **SAMPLING,
                         **ALONE[which], **EVERY_STEP)
    toks, stats = tokens_of(gen, [3, 500, 999], [0, 1, 2])
    assert torch.equal(toks, ref)
    assert stats["full_steps"] == stats["steps"] == SAMPLING["num_iter"]
    if which in ("head", "all"):
        assert stats["head_full_timesteps"] == stats["head_timesteps"] == 4 * SAMPLING["num_iter"]


@pytest.mark.parametrize("which", list(ALONE))
def test_default_schedule_changes_output_and_saves_work(baseline, which):
    """The counterpart of the test above: with lazy steps each cache does change the computation."""
    gen0, ref = baseline
    gen = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, **SAMPLING,
                         warmup_steps=2, refresh_interval=3, **ALONE[which])
    toks, stats = tokens_of(gen, [3, 500, 999], [0, 1, 2])
    assert torch.isfinite(toks).all() and not torch.equal(toks, ref)
    if which == "head":  # no transformer cache: every transformer step is full
        assert stats["full_steps"] == 8 and stats["head_full_timesteps"] < stats["head_timesteps"]
    else:
        assert stats["full_steps"] == 4  # steps 0, 1, 2, 5 of 8
        assert stats["recomputed_fraction_encoder"] < 1


@pytest.mark.slow
def test_images_bitwise_and_flops_with_all_caches():
    kw = dict(random_init=True, device="cpu", **SAMPLING)
    base = load_generator("mar_tiny", **kw).generate([7, 8], seeds=[4, 5])
    same = load_generator("mar_tiny", accel="lazymar", **kw, **EVERY_STEP).generate([7, 8], seeds=[4, 5])
    lazy = load_generator("mar_tiny", accel="lazymar", **kw, warmup_steps=2, refresh_interval=3).generate([7, 8], seeds=[4, 5])
    assert np.array_equal(base.images, same.images)
    assert same.stats["flops"] == pytest.approx(base.stats["flops"] + same.stats.get("flops_lazymar", 0.0))
    for part in ("encoder", "decoder", "head"):
        assert lazy.stats[f"flops_{part}"] < base.stats[f"flops_{part}"]
    assert lazy.stats["flops_tokenizer"] == base.stats["flops_tokenizer"]
    assert 0 < lazy.stats["recomputed_fraction_decoder_late"] < lazy.stats["recomputed_fraction_decoder_early"] < 1


def test_lazy_flops_match_torch_flop_counter(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from accel.flops import FlopCounter

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, -1) @ v)
    method = LazyMAR(mar.CONFIGS["mar_tiny"], guided=True, warmup_steps=1, refresh_interval=3)
    cache, head = method.new_caches(2)
    model = mar.build_model("mar_tiny").eval()
    ours = FlopCounter()
    with torch.no_grad(), FlopCounterMode(display=False) as theirs, fl.counting(ours):
        model.sample_tokens(torch.tensor([1, 2]), seeded_generators([0, 1], torch.device("cpu")), num_iter=12,
                            cfg=3.0, num_sampling_steps=8, cache=cache, head_cache=head)
    assert cache.full_steps == 5 and head.full_timesteps < head.timesteps  # 0, 1, 4, 7, 10
    assert ours.total - ours.by_component["lazymar"] == pytest.approx(theirs.get_total_flops(), rel=1e-9)


# ------------------------------------------------------------------------------------------------------
# schedules
# ------------------------------------------------------------------------------------------------------
def test_upstream_schedules_at_64_steps():
    m = LazyMAR(mar.CONFIGS["mar_base"], guided=True)
    assert [s for s in range(64) if m.is_full_step(s)] == [0, 1, 2, 3, 4, 5, 14, 23, 32, 41, 50, 59]
    assert [m.retain_ratio(s, 64) for s in range(64)] == UPSTREAM_RETAIN
    c = m.config
    assert (c.select_layer, c.keep_slack, c.head_refresh_interval, c.head_skip_blocks) == (3, 15, 7, (1, 2, 3, 4))
    head = __import__("accel.methods.lazymar", fromlist=["HeadCache"]).HeadCache(m)
    full, recompute = [], []
    for i in range(99, -1, -1):
        head.begin(i, 100)
        full += [i] if head.full else []
        recompute += [i] if head.recompute_mlp and not head.full else []
    assert full == [99, 98, 91, 84, 77, 70, 63, 56, 49, 42, 35, 28, 21, 14, 7, 0]
    assert recompute == [97, 96, 95, 94, 93, 92]


@pytest.mark.parametrize("num_iter", [32, 128, 256])
def test_retain_schedule_follows_progress(num_iter):
    m = LazyMAR(mar.CONFIGS["mar_base"], guided=True)
    ratios = [m.retain_ratio(s, num_iter) for s in range(num_iter)]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] == 1.0 and ratios[-1] == 0.05
    # the same ratio at the same fraction of decoding as upstream's 64-step table
    for s in range(num_iter):
        assert ratios[s] == UPSTREAM_RETAIN[int(np.floor(s * 64 / num_iter))]


def test_selection_always_keeps_forced_tokens():
    m = LazyMAR(mar.CONFIGS["mar_tiny"], guided=True, retain_schedule=[[0, 0.05]], keep_slack=2)
    cache, _ = m.new_caches(2)
    pred = torch.zeros(2, 256, dtype=torch.bool)
    prev = torch.zeros(2, 256, dtype=torch.bool)
    pred[0, [5, 9]], pred[1, [7, 100]] = True, True
    prev[0, 200], prev[1, 3] = True, True
    cache.begin_step(0, 8, pred, prev)  # prev_pred <- prev on the next call
    cache.begin_step(1, 8, pred, pred)
    score = torch.full((2, 320), -0.5)  # every unforced token looks more changed than a forced one at 0
    score[:, 300:] = -0.9
    cache.select(score)
    keep = cache.keep_x[:, :, 0]
    assert cache.n_keep == max(3 + 2, int(320 * 0.05))  # 16
    for row, forced in ((0, [64 + 5, 64 + 9, 64 + 200]), (1, [64 + 7, 64 + 100, 64 + 3])):
        assert set(forced) <= set(keep[row].tolist())
        assert set(keep[row].tolist()) - set(forced) <= set(range(300, 320))  # then the least similar


@pytest.mark.slow
@pytest.mark.parametrize("num_iter", [32, 128, 256])
def test_runs_beyond_64_steps(num_iter):
    gen = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, num_iter=num_iter,
                         num_sampling_steps=1, cfg=2.0)
    toks, stats = tokens_of(gen, [1], [0])
    assert torch.isfinite(toks).all() and stats["steps"] == num_iter
    assert stats["full_steps"] == 5 + len(range(5, num_iter, 9))
    assert stats["recomputed_fraction_decoder_late"] < 0.6


def test_batch_composition_does_not_change_samples():
    gen = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, **SAMPLING,
                         warmup_steps=2, refresh_interval=3)
    a, _ = tokens_of(gen, [3, 500, 999], [0, 1, 2])
    b, _ = tokens_of(gen, [500], [1])
    assert torch.allclose(a[1], b[0], rtol=1e-3, atol=1e-3 * a.abs().max().item())


# ------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts, match", [
    (dict(retain_schedule=[[0, 0.0]]), r"retain ratio 0.0 is outside \(0, 1\]"),
    (dict(retain_schedule=[[0, 1.0], [0.5, 1.5]]), r"retain ratio 1.5 is outside \(0, 1\]"),
    (dict(retain_schedule=-0.2), r"retain ratio -0.2"),
    (dict(retain_schedule=[[0.1, 1.0]]), r"must start at progress 0"),
    (dict(retain_schedule=[[0, 1.0], [0.5, 0.5], [0.4, 0.2]]), r"progress 0.4 does not rise"),
    (dict(retain_schedule="fast"), r"retain_schedule='fast'"),
    (dict(select_layer=6),
     r"select_layer=6; expected an integer from 0 to 5 \(a decoder layer index; this model has 6 decoder layers"),
    (dict(refresh_interval=0), r"refresh_interval=0"),
    (dict(warmup_steps=-1), r"warmup_steps=-1"),
    (dict(head_refresh_interval=0.5), r"head_refresh_interval=0.5"),
    (dict(head_skip_blocks=[1, 7]), r"head_skip_blocks=\[1, 7\].*\[0, 6\)"),
    (dict(head_warmup=2.0), r"head_warmup=2.0"),
    (dict(token_cache="yes"), r"token_cache='yes' is not true or false"),
    (dict(refresh_every=1), r"unknown option\(s\) \['refresh_every'\]"),
])
def test_bad_lazymar_options(opts, match):
    with pytest.raises(ArgenError, match=match):
        load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, **opts)


def test_cfg_one_switches_the_condition_cache_off_with_a_warning():
    with pytest.warns(UserWarning, match="condition_cache needs the two CFG branches"):
        gen = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, num_iter=8,
                             num_sampling_steps=4, cfg=1.0, warmup_steps=2, refresh_interval=3)
    assert gen.method.config.condition_cache is False
    base = load_generator("mar_tiny", device="cpu", random_init=True, num_iter=8, num_sampling_steps=4, cfg=1.0)
    every = load_generator("mar_tiny", accel="lazymar", device="cpu", random_init=True, num_iter=8,
                           num_sampling_steps=4, cfg=1.0, condition_cache=False, **EVERY_STEP)
    toks, stats = tokens_of(gen, [1, 2], [0, 1])
    assert torch.isfinite(toks).all() and stats["full_steps"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # condition_cache=false: no warning
        assert torch.equal(tokens_of(every, [1, 2], [0, 1])[0], tokens_of(base, [1, 2], [0, 1])[0])
