"""Batched speculative decoding: exactness (greedy equality, sampling distribution), per-row
independence, counters, and bad options. CPU, fp32, small models of the official structure."""
import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from accel.api import ArgenError, load_generator
from accel.methods import speculative as sp
from accel.methods.lantern import LanternRule
from accel.methods.tree import TreeShape
from accel.families import llamagen as lg



def small(seed, vocab=512, grid=8, layers=2, dim=32, heads=2, num_classes=10):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = lg.Transformer(lg.ModelArgs(n_layer=layers, n_head=heads, dim=dim, multiple_of=32, vocab_size=vocab,
                                        block_size=grid * grid, num_classes=num_classes))
        m.init_weights(zero_output=False)
    return m.eval()


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@pytest.fixture(scope="module")
def pair():
    return small(0), small(1, layers=1, dim=32)


def run(target, drafter, opts, labels, seeds, rule=None):
    dec = sp.SpeculativeDecoder(target, drafter, rule or sp.ExactRule(), opts)
    with torch.no_grad():
        return dec.generate(torch.tensor(labels), gens(seeds))


def random_codebook(vocab, seed=0):
    return torch.randn(vocab, 8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# greedy: identical tokens to plain greedy decoding
# ---------------------------------------------------------------------------------------------
GREEDY = lg.SamplingOptions(cfg=3.0, cfg_interval=20, top_k=100, greedy=True)


@pytest.mark.parametrize("make", [
    lambda t, d: (sp.ModelDrafter(d, 3), None),
    lambda t, d: (sp.ModelDrafter(d, 5, "argmax"), None),
    lambda t, d: (sp.ModelDrafter(t, 4), None),                       # drafter = target: everything accepted
    lambda t, d: (sp.JacobiDrafter(6), None),
    lambda t, d: (sp.JacobiDrafter(3, "repeat"), None),
    lambda t, d: (sp.ModelDrafter(d, 3), LanternRule.from_codebook(random_codebook(512), 20, 0.0)),
    lambda t, d: (sp.ModelDrafter(d, 3), LanternRule.from_codebook(random_codebook(512), 20, 0.5, lam=1.0)),
    lambda t, d: (sp.JacobiDrafter(4), LanternRule.from_codebook(random_codebook(512), 0, 0.9)),
], ids=["model", "model-argmax", "self", "sjd", "sjd-repeat", "lantern-delta0", "lantern-lambda1", "lantern-k0"])
def test_greedy_speculative_equals_plain_greedy(pair, make, tmp_path, monkeypatch):
    monkeypatch.setattr("accel.checkpoints.CACHE_DIR", tmp_path)
    target, small_drafter = pair
    drafter, rule = make(target, small_drafter)
    labels, seeds = [1, 4, 4, 9, 0], [0, 1, 2, 3, 4]
    with torch.no_grad():
        ref = lg.generate_tokens(target, torch.tensor(labels), GREEDY, gens(seeds))
    seq, c = run(target, drafter, GREEDY, labels, seeds, rule)
    assert torch.equal(seq, ref)
    assert c["target_forwards_per_image"] <= 64 and 1.0 <= c["accepted_length"] <= drafter.gamma + 1
    if drafter.gamma == 4 and isinstance(drafter, sp.ModelDrafter):  # self-drafting
        # prefill, 12 steps of 5 tokens, one last step of 3
        assert c["acceptance_rate"] == 1.0 and c["target_forwards_per_image"] == 14


@pytest.mark.parametrize("accel,extra", [
    ("speculative", {"gamma": 3}),
    pytest.param("lantern", {"lantern_delta": 0.0, "lantern_k": 5}, marks=pytest.mark.slow),
    pytest.param("sjd", {"window": 8}, marks=pytest.mark.slow),
    ("speculative", {"drafter": "eagle", "tree_tokens": 12, "tree_depth": 3, "tree_top_k": 4}),
    # ~16 s each with the release's tree: heavy; tests/test_tree.py checks these trees' greedy tokens
    pytest.param("lantern", {"drafter": "eagle", "lantern_delta": 0.0, "lantern_k": 5}, marks=pytest.mark.heavy),
    pytest.param("lantern", {"drafter": "eagle", "tree": "static", "lantern_lambda": 1.0, "lantern_k": 5},
                 marks=pytest.mark.heavy),
])
def test_greedy_generator_end_to_end_identical_images(accel, extra, tmp_path, monkeypatch):
    monkeypatch.setattr("accel.checkpoints.CACHE_DIR", tmp_path)
    kw = dict(device="cpu", random_init=True, greedy=True, cfg=2.0)
    base = load_generator("llamagen_tiny", accel="none", **kw).generate([3, 8], seeds=[0, 1])
    if True:
        out = load_generator("llamagen_tiny", accel=accel, **kw, **extra).generate([3, 8], seeds=[0, 1])
        assert (out.images == base.images).all(), accel
        s = out.stats
        for key in ("accepted_length", "target_forwards_per_image", "drafter_forwards_per_image", "flops"):
            assert key in s
        assert s["target_forwards_per_image"] <= 256
        if accel != "sjd":
            assert s["drafter_forwards_per_image"] > 0 and s["flops_drafter"] > 0
        else:
            assert s["drafter_forwards_per_image"] == 0


# ---------------------------------------------------------------------------------------------
# sampling: the target's distribution (chi-square against the exact distribution)
# ---------------------------------------------------------------------------------------------
V, GRID = 6, 2
SAMPLE = lg.SamplingOptions(cfg=2.0, top_k=5, temperature=1.0)


@pytest.fixture(scope="module")
def toy():
    target = small(10, vocab=V, grid=GRID, layers=2, dim=32, num_classes=3)
    drafter = small(11, vocab=V, grid=GRID, layers=1, dim=32, num_classes=3)
    return target, drafter, exact_sequence_probs(target, label=1)


def exact_sequence_probs(model, label):
    """P(x0..x3) for every one of the V^4 sequences, from full forwards (CFG, top-k as in SAMPLE)."""
    prefixes = torch.tensor(list(itertools.product(range(V), repeat=GRID * GRID - 1)))   # [V^3, 3]
    P = prefixes.shape[0]
    with torch.no_grad():
        logits = model(torch.cat([prefixes, prefixes]), torch.tensor([label] * P + [3] * P))  # [2P, 4, V]
    probs = lg.logits_to_probs(lg.guided_logits(logits, SAMPLE, 0), SAMPLE)               # [P, 4, V]
    joint = torch.zeros((V,) * 4, dtype=torch.float64)
    for i, (a, b, c) in enumerate(prefixes.tolist()):
        joint[a, b, c] = (probs[i, 0, a] * probs[i, 1, b] * probs[i, 2, c]).double() * probs[i, 3].double()
    return joint  # rows with a != prefix of other rows are filled consistently: p0 is the same for all


def pair_pvalues(samples: torch.Tensor, joint: torch.Tensor) -> list[float]:
    """Chi-square p-values of the pairs (x0,x1), (x1,x2), (x2,x3); cells expected < 5 are pooled."""
    out = []
    for i in range(3):
        dims = tuple(d for d in range(4) if d not in (i, i + 1))
        p = joint.sum(dims).flatten()
        counts = torch.bincount(samples[:, i] * V + samples[:, i + 1], minlength=V * V).double()
        if counts[p == 0].sum() > 0:  # a zero-probability pair was sampled
            return [0.0]
        exp = p * samples.shape[0]
        big = exp >= 5
        f_obs = torch.cat([counts[big], counts[~big].sum()[None]]).numpy()
        f_exp = torch.cat([exp[big], exp[~big].sum()[None]]).numpy()
        if f_exp[-1] == 0:
            f_obs, f_exp = f_obs[:-1], f_exp[:-1]
        out.append(float(chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue))
    return out


M = 3000


def sample_many(target, drafter, rule=None, seed0=0):
    seq, c = run(target, drafter, SAMPLE, [1] * M, range(seed0, seed0 + M), rule)
    return seq, c


class AcceptAll(sp.ExactRule):
    exact = False  # a wrong rule: the tree must run it sibling by sibling, as any rule that is not exact

    def relaxed_prob(self, p, drafts):
        pd, r = super().relaxed_prob(p, drafts)
        return torch.full_like(pd, 1e9), r


class ResampleFromTarget(sp.ExactRule):
    """Wrong rejection handling: draw from p instead of norm(max(0, p - q))."""

    exact = False

    def residual(self, p, q, drafts, relaxed):
        return p


def test_plain_sampling_loop_matches_exact_distribution(toy):
    target, _, joint = toy
    with torch.no_grad():
        seq = lg.generate_tokens(target, torch.tensor([1] * M), SAMPLE, gens(range(M)))
    assert min(pair_pvalues(seq, joint)) > 1e-3


def test_speculative_sampling_gives_the_target_distribution(toy):
    target, drafter, joint = toy
    seq, c = sample_many(target, sp.ModelDrafter(drafter, 3))
    assert min(pair_pvalues(seq, joint)) > 1e-3
    assert 0.0 < c["acceptance_rate"] < 1.0  # both branches (accept, residual) were exercised


@pytest.mark.slow
def test_the_distribution_check_has_power(toy):
    """The same check rejects a drafter-biased sampler and a wrong residual."""
    target, drafter, joint = toy
    bad, _ = sample_many(target, sp.ModelDrafter(drafter, 3), AcceptAll())
    assert min(pair_pvalues(bad, joint)) < 1e-6
    bad, _ = sample_many(target, sp.ModelDrafter(drafter, 3), ResampleFromTarget())
    assert min(pair_pvalues(bad, joint)) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda d: (sp.ModelDrafter(d, 2, "argmax"), None),
    lambda d: (sp.JacobiDrafter(3), None),
    lambda d: (sp.JacobiDrafter(2, "repeat"), None),
    lambda d: (sp.ModelDrafter(d, 3), LanternRule(torch.randperm(V)[None].repeat(V, 1)[:, :4], 3, 0.0)),
], ids=["argmax-drafts", "sjd", "sjd-repeat", "lantern-delta0"])
def test_other_drafters_sample_the_target_distribution(toy, make):
    target, drafter, joint = toy
    d, rule = make(drafter)
    seq, c = sample_many(target, d, rule, seed0=10_000)
    assert min(pair_pvalues(seq, joint)) > 1e-3
    assert c["acceptance_rate"] > 0.0


# ---------------------------------------------------------------------------------------------
# batching, counters, LANTERN behaviour
# ---------------------------------------------------------------------------------------------
def test_rows_do_not_depend_on_batch_mates(pair):
    target, drafter = pair
    opts = lg.SamplingOptions(cfg=2.0, top_k=50)
    for make in (lambda: sp.ModelDrafter(drafter, 3), lambda: sp.JacobiDrafter(5)):
        batch, _ = run(target, make(), opts, [2, 5, 7], [10, 11, 12])
        alone, _ = run(target, make(), opts, [5], [11])
        assert torch.equal(batch[1], alone[0])


def test_lantern_delta0_is_exactly_speculative_sampling(pair, tmp_path):
    target, drafter = pair
    opts = lg.SamplingOptions(cfg=2.0, top_k=50)
    exact, _ = run(target, sp.ModelDrafter(drafter, 3), opts, [1, 2], [5, 6])
    rule = LanternRule.from_codebook(random_codebook(512), 50, 0.0, cache_dir=tmp_path)
    relaxed0, _ = run(target, sp.ModelDrafter(drafter, 3), opts, [1, 2], [5, 6], rule)
    assert torch.equal(exact, relaxed0)
    rule = LanternRule.from_codebook(random_codebook(512), 50, 0.5, cache_dir=tmp_path)
    _, c0 = run(target, sp.ModelDrafter(drafter, 3), opts, [1, 2, 3, 4], [5, 6, 7, 8])
    _, c5 = run(target, sp.ModelDrafter(drafter, 3), opts, [1, 2, 3, 4], [5, 6, 7, 8], rule)
    assert c5["accepted_length"] > c0["accepted_length"]


def brute_relaxed(p, x, nbrs, k, delta, lam):
    bound = (lam - 1) * p[x] if lam is not None else delta
    total, best = 0.0, 0.0
    for b in nbrs[:k]:
        total += float(p[b])
        if total <= bound + 1e-12:
            best = total
        else:
            break
    return float(p[x]) + best, best > 0


@pytest.mark.parametrize("k,delta,lam", [(1, 0.2, None), (5, 0.05, None), (8, 0.4, None), (5, 0.0, 3.0), (8, 0.0, 20.0)])
def test_relaxed_probability_matches_brute_force(k, delta, lam):
    g = torch.Generator().manual_seed(k)
    Vs = 12
    table = torch.stack([torch.randperm(Vs, generator=g) for _ in range(Vs)])
    table = torch.stack([row[row != i][:k + 1] for i, row in enumerate(table)])
    p = torch.softmax(3 * torch.randn(2, 5, Vs, generator=g), -1)
    drafts = torch.randint(0, Vs, (2, 5), generator=g)
    rule = LanternRule(table, k, delta, lam)
    got, relaxed = rule.relaxed_prob(p, drafts)
    for b in range(2):
        for i in range(5):
            want, was = brute_relaxed(p[b, i], int(drafts[b, i]), table[int(drafts[b, i])].tolist(), k, delta, lam)
            assert got[b, i].item() == pytest.approx(want, abs=1e-6) and bool(relaxed[b, i]) == was
            if lam is None:
                assert got[b, i] - p[b, i, drafts[b, i]] <= delta + 1e-6   # the TVD bound
            else:
                assert got[b, i] <= lam * p[b, i, drafts[b, i]] + 1e-6     # LANTERN++: p~ <= lambda p
    # on rejection of a relaxed draft its k+1 nearest neighbours are zeroed: in the target where the draft was
    # certain (one-hot q: they leave the residual's support), in q where it was sampled (the residual keeps
    # the target's mass on them)
    q = torch.softmax(2 * torch.randn(2, Vs, generator=g), -1)
    one_hot = torch.zeros(2, Vs).scatter(-1, drafts[:, :1], 1.0)
    certain = rule.residual(p[:, 0], one_hot, drafts[:, 0], relaxed[:, 0])
    sampled = rule.residual(p[:, 0], q, drafts[:, 0], relaxed[:, 0])
    for b in range(2):
        x, nb = int(drafts[b, 0]), table[int(drafts[b, 0])]
        others = torch.ones(Vs, dtype=torch.bool)
        others[nb] = False
        others[x] = False
        assert certain[b, x] == 0 and torch.equal(certain[b, others], p[b, 0, others])
        assert torch.equal(sampled[b, others], (p[b, 0, others] - q[b, others]).clamp_min(0))
        assert sampled[b, x] == (p[b, 0, x] - q[b, x]).clamp_min(0)
        if relaxed[b, 0]:
            assert torch.all(certain[b, nb] == 0)
            assert torch.equal(sampled[b, nb], p[b, 0, nb])
        else:
            assert torch.equal(certain[b, nb], p[b, 0, nb])
            assert torch.equal(sampled[b, nb], (p[b, 0, nb] - q[b, nb]).clamp_min(0))


def test_neighbour_table_is_l2_on_raw_rows_and_cached(tmp_path, monkeypatch):
    from accel.methods import lantern

    cb = random_codebook(40) * torch.linspace(0.1, 3, 40)[:, None]   # rows of very different norms
    monkeypatch.setattr("accel.checkpoints.CACHE_DIR", tmp_path)
    table = lantern.neighbour_table(cb, 7)
    d = ((cb[:, None] - cb[None]) ** 2).sum(-1)
    d.fill_diagonal_(float("inf"))
    assert torch.equal(table, d.argsort(1)[:, :7])
    assert not (table == torch.arange(40)[:, None]).any()
    files = list((tmp_path / "lantern").glob("*.npy"))
    assert len(files) == 1 and np.load(files[0]).dtype == np.uint16
    def recompute(*args, **kwargs):
        raise RuntimeError("recomputed")

    monkeypatch.setattr(lantern, "compute_neighbours", recompute)
    assert torch.equal(lantern.neighbour_table(cb, 7), table)        # read back from disk
    other = cb.clone()
    other[0, 0] += 1
    with pytest.raises(RuntimeError, match="recomputed"):
        lantern.neighbour_table(other, 7)                              # another codebook: another key


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("accel,opts,match", [
    ("lantern", {"lantern_delta": -0.1}, r"lantern_delta=-0\.1"),
    ("lantern", {"lantern_delta": 2.0}, "lantern_lambda instead"),
    ("lantern", {"lantern_k": -1}, r"lantern_k=-1; expected an integer from 0 to 16383 \(latent neighbours"),
    ("lantern", {"lantern_k": 16384}, r"lantern_k=16384"),
    ("lantern", {"lantern_lambda": 0.5}, "lantern_lambda=0.5"),
    ("sjd", {"window": 0}, "window=0"),
    ("speculative", {"drafter": "sjd", "window": -3}, "window=-3"),
    ("speculative", {"drafter": "sjd", "gamma": 0}, "window=0"),
    ("speculative", {"gamma": 0}, "gamma=0"),
    ("speculative", {"window": 4}, "window is the SJD window"),
    ("speculative", {"draft_mode": "beam"}, "draft_mode='beam'"),
    ("sjd", {"sjd_init": "zeros"}, "sjd_init='zeros'"),
    ("sjd", {"drafter": "llamagen_tiny_draft"}, "accel=sjd drafts with the target"),
    ("speculative", {"drafter": "llamagen_q"}, "drafter='llamagen_q'"),
    ("speculative", {"drafter": "llamagen_b"}, "drafter llamagen_b uses tokenizer"),
    ("speculative", {"drafter": "llamagen_tiny_draft", "lantern_k": 3}, "unknown option"),
    ("speculative", {"drafter": "eagle", "gamma": 3}, "gamma=3 does not apply to drafter=eagle"),
    ("speculative", {"drafter": "llamagen_tiny_draft", "tree_depth": 2}, "shape the draft tree of drafter=eagle"),
    ("lantern", {"drafter": "eagle", "tree_tokens": 1000}, "tree_tokens=1000 must be in"),
    ("lantern", {"drafter": "eagle", "tree": "static", "tree_depth": 3}, "tree=static is the release's fixed"),
    ("lantern", {"drafter": "eagle", "tree": "wide"}, "tree='wide'; expected 'dynamic'"),
])
def test_bad_options(accel, opts, match):
    with pytest.raises(ArgenError, match=match):
        load_generator("llamagen_tiny", accel=accel, device="cpu", random_init=True, **opts)


def test_an_eagle_drafter_without_weights_names_the_file_to_pass():
    with pytest.raises(ArgenError, match=r"drafter=eagle for llamagen_b has no weights: pass drafter_checkpoint="
                                         r"<the EAGLE drafter's file, e.g. pytorch_model.bin of jadohu/llamagen_drafter"):
        load_generator("llamagen_b", accel="lantern", device="cpu", checkpoint="/nonexistent/c2i.pt",
                       tokenizer_checkpoint="/nonexistent/vq.pt", drafter="eagle")


def test_drafter_weights_and_grids_must_fit(tmp_path):
    with pytest.raises(ArgenError, match=r"drafter llamagen_b has no weights: pass drafter_checkpoint=<path of "
                                         r"c2i_B_256.pt> \(accel.options.drafter_checkpoint="):
        load_generator("llamagen_xl", accel="speculative", device="cpu", checkpoint=str(tmp_path / "c2i.pt"),
                       tokenizer_checkpoint=str(tmp_path / "vq.pt"))
    with pytest.raises(ArgenError, match="16x16 token grid but target llamagen_xl_384 a 24x24"):
        load_generator("llamagen_xl_384", accel="speculative", drafter="llamagen_b", drafter_checkpoint="x",
                       device="cpu", checkpoint="c", tokenizer_checkpoint="t")
    with pytest.raises(ArgenError, match="vocabulary size 256 but target"):
        sp.SpeculativeDecoder(small(0), sp.ModelDrafter(small(1, vocab=256), 2), sp.ExactRule(), GREEDY)
    with pytest.raises(ArgenError, match="token grid"):
        sp.SpeculativeDecoder(small(0), sp.ModelDrafter(small(1, grid=4), 2), sp.ExactRule(), GREEDY)


def test_without_cfg_and_with_nucleus(pair):
    """cfg <= 1 (no batch doubling) and top-p: greedy equality and per-row independence still hold."""
    target, drafter = pair
    greedy = lg.SamplingOptions(cfg=1.0, top_p=0.8, greedy=True)
    with torch.no_grad():
        ref = lg.generate_tokens(target, torch.tensor([2, 3]), greedy, gens([0, 1]))
    seq, _ = run(target, sp.ModelDrafter(drafter, 2), greedy, [2, 3], [0, 1])
    assert torch.equal(seq, ref)
    opts = lg.SamplingOptions(cfg=1.0, top_p=0.8, temperature=0.7)
    batch, c = run(target, sp.JacobiDrafter(4, "repeat"), opts, [2, 3], [7, 8])
    alone, _ = run(target, sp.JacobiDrafter(4, "repeat"), opts, [3], [8])
    assert torch.equal(batch[1], alone[0]) and c["drafter_forwards_per_image"] == 0


def test_greedy_verification_relaxes_the_unfiltered_softmax():
    """Greedy LANTERN (the release's temperature-0 verifier) relaxes softmax(logits): a neighbour outside
    top-k keeps its mass; the argmax, all greedy decoding uses, is the same as with the filter."""
    logits = torch.tensor([[4.0, 3.0, 2.5, 0.0, -1.0]])
    opts = lg.SamplingOptions(top_k=2, temperature=0.5, greedy=True)
    p = lg.logits_to_probs(logits, opts)
    torch.testing.assert_close(p, logits.softmax(-1))
    assert p[0, 2] > 0 and int(p.argmax()) == int(lg.logits_to_probs(logits, lg.SamplingOptions(top_k=2)).argmax())


@pytest.mark.parametrize("accel", ["speculative", "lantern"])
def test_job_configs_leave_gamma_to_the_drafter(accel):
    """The job configs' accel options: a drafter model drafts 4 tokens per step; a model whose default drafter is
    SJD (llamagen_b, the t2i models) gets the SJD window, not a window of 4 read from gamma."""
    from omegaconf import OmegaConf

    from jobs.submit import compose

    options = OmegaConf.to_container(compose("generate", [f"accel={accel}"]).accel.options)
    options.pop("drafter_checkpoint")
    with_model = sp.SpecConfig.from_options(accel, "llamagen_l", dict(options), "llamagen_b", True)
    with_sjd = sp.SpecConfig.from_options(accel, "llamagen_b", dict(options), "sjd", True)
    assert (with_model.drafter, with_model.gamma) == ("llamagen_b", 4)
    assert (with_sjd.drafter, with_sjd.gamma) == ("sjd", sp.SJD_WINDOW)
    with_eagle = sp.SpecConfig.from_options(accel, "llamagen_b", {**options, "drafter": "eagle"}, "sjd", True)
    assert with_eagle.tree == TreeShape()  # the release's 59 / 4 / 10


def test_sjd_window_from_window_gamma_or_default():
    def spec(**options):  # accel=speculative drafter=sjd: gamma is the window there (accel=sjd takes window only)
        return sp.SpecConfig.from_options("speculative", "llamagen_b", options, "sjd", True)

    assert spec().gamma == spec(window=None).gamma == spec(gamma=None).gamma == sp.SJD_WINDOW
    assert spec(window=6).gamma == 6 and spec(gamma=5).gamma == 5
    with pytest.raises(ArgenError, match=r"gamma=5 and window=6 both set the SJD window; pass only window"):
        spec(gamma=5, window=6)
