"""Dynamic draft trees with an EAGLE drafter (accel/methods/tree.py): greedy equality with plain decoding,
the target's distribution when sampling (delta = 0), the check's power, per-row independence."""
from __future__ import annotations

import pytest
import torch
from test_speculative import (SAMPLE, V, AcceptAll, ResampleFromTarget, gens, pair_pvalues, small,  # noqa: F401
                              toy)  # toy: a fixture

from accel.api import seeded_init
from accel.families import llamagen as lg
from accel.methods import speculative as sp
from accel.methods.eagle import build_eagle_head
from accel.methods.lantern import LanternRule
from accel.methods.tree import NAIVE_EXTEND_57, EagleTreeDecoder, StaticTree, TreeShape

SMALL_TREE = TreeShape(tokens=10, depth=2, top_k=3)


def head_for(target, seed=5):
    with seeded_init(seed):
        return build_eagle_head(target).eval()


def decode(target, head, opts, labels, seeds, rule=None, shape=TreeShape()):
    dec = EagleTreeDecoder(target, head, rule or sp.ExactRule(), opts, shape)
    return dec.generate(torch.tensor(labels), gens(seeds))


@pytest.fixture(scope="module")
def target():
    return small(0)


@pytest.mark.parametrize("opts", [lg.SamplingOptions(cfg=3.0, cfg_interval=20, top_k=100, greedy=True),
                                  lg.SamplingOptions(cfg=1.0, greedy=True)], ids=["cfg-interval", "no-cfg"])
@pytest.mark.parametrize("rule", [None, LanternRule.from_codebook(torch.randn(512, 8), 20, 0.0)],
                         ids=["exact", "lantern-delta0"])
def test_greedy_tree_decoding_equals_plain_greedy(target, opts, rule):
    labels, seeds = [1, 4, 7], [0, 1, 2]
    plain = lg.generate_tokens(target, torch.tensor(labels), opts, gens(seeds))
    tokens, c = decode(target, head_for(target), opts, labels, seeds, rule, TreeShape(tokens=12, depth=3, top_k=4))
    assert torch.equal(tokens, plain)
    assert c["tree_nodes"] == 12 and c["target_forward_calls"] >= 2


def test_a_drafter_that_knows_the_target_is_accepted_deeply():
    """The head trained for a few hundred steps on a tiny target's features is accepted well beyond one
    token per forward (the mechanics of drafting, tree masks and the KV moves line up)."""
    from training.llamagen import eagle_loss, eagle_pairs

    target = small(3, vocab=64, grid=4, layers=1, dim=32)
    head = head_for(target).train()
    opt = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    opts = lg.SamplingOptions(cfg=1.0, greedy=True)
    codes = lg.generate_tokens(target, torch.randint(0, 10, (64,), generator=g), opts, gens(range(64)))
    for step in range(300):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = eagle_loss(target, head(*eagle_pairs(target, codes[idx], idx % 10)[:2]),
                          eagle_pairs(target, codes[idx], idx % 10)[2], 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    labels = list(range(8))
    plain = lg.generate_tokens(target, torch.tensor(labels), opts, gens(labels))
    tokens, c = decode(target, head, opts, labels, labels, shape=TreeShape(tokens=16, depth=3, top_k=4))
    assert torch.equal(tokens, plain)
    assert c["accepted_length"] > 2.0, c


def test_tree_sampling_gives_the_target_distribution(toy):  # noqa: F811
    target, _, joint = toy
    seq, c = decode(target, head_for(target), SAMPLE, [1] * 3000, range(3000), shape=SMALL_TREE)
    assert min(pair_pvalues(seq, joint)) > 1e-3
    assert 1.0 < c["accepted_length"] < 4.0  # both accepting and rejecting were exercised


@pytest.mark.slow
def test_the_tree_distribution_check_has_power(toy):  # noqa: F811
    target, _, joint = toy
    bad, _ = decode(target, head_for(target), SAMPLE, [1] * 3000, range(3000), AcceptAll(), SMALL_TREE)
    assert min(pair_pvalues(bad, joint)) < 1e-6
    bad, _ = decode(target, head_for(target), SAMPLE, [1] * 3000, range(3000), ResampleFromTarget(), SMALL_TREE)
    assert min(pair_pvalues(bad, joint)) < 1e-6  # siblings retried against p itself, not what is left of it


@pytest.mark.slow
def test_lantern_delta0_tree_sampling_gives_the_target_distribution(toy):  # noqa: F811
    target, _, joint = toy
    rule = LanternRule(torch.randperm(V)[None].repeat(V, 1)[:, :4], 3, 0.0)
    assert rule.exact
    rule.exact = False  # through the sibling-by-sibling path LANTERN's sampling takes, with nothing relaxed
    seq, _ = decode(target, head_for(target), SAMPLE, [1] * 3000, range(10_000, 13_000), rule, SMALL_TREE)
    assert min(pair_pvalues(seq, joint)) > 1e-3




def test_bad_tree_shapes_are_refused():
    with pytest.raises(Exception, match="tree_tokens=500 must be in"):
        TreeShape(tokens=500).check(16384)
    with pytest.raises(Exception, match="tree_top_k=0"):
        TreeShape(top_k=0).check(16384)


# ---------------------------------------------------------------------------------------------
# LANTERN++'s static tree: drafts drawn without replacement, verified against q
# ---------------------------------------------------------------------------------------------
STATIC = StaticTree.from_child_counts(NAIVE_EXTEND_57)
SMALL_STATIC = StaticTree.from_child_counts({(): 3, (0,): 2, (1,): 1, (0, 0): 2})


def test_the_static_tree_is_the_releases_naive_extend_57():
    assert STATIC.tokens == 58 and STATIC.levels == 5  # 57 drafts and the root
    assert [STATIC.depth.count(d) for d in range(1, 6)] == [5, 13, 16, 14, 9]
    assert all(STATIC.depth[STATIC.parent[i]] == STATIC.depth[i] - 1 for i in range(1, 58))


def test_greedy_static_tree_decoding_equals_plain_greedy(target):
    opts = lg.SamplingOptions(cfg=3.0, top_k=100, greedy=True)
    plain = lg.generate_tokens(target, torch.tensor([2, 6]), opts, gens([0, 1]))
    tokens, c = decode(target, head_for(target), opts, [2, 6], [0, 1], shape=STATIC)
    assert torch.equal(tokens, plain) and c["tree_nodes"] == 58


@pytest.mark.parametrize("rule", [None, LanternRule(torch.randperm(V)[None].repeat(V, 1)[:, :4], 3, 0.0)],
                         ids=["exact", "lantern-delta0"])
def test_static_tree_sampling_gives_the_target_distribution(toy, rule):  # noqa: F811
    target, _, joint = toy
    seq, c = decode(target, head_for(target), SAMPLE, [1] * 3000, range(20_000, 23_000), rule, SMALL_STATIC)
    assert min(pair_pvalues(seq, joint)) > 1e-3
    assert 1.0 < c["accepted_length"] < 4.0


@pytest.mark.slow
def test_the_static_tree_check_has_power(toy):  # noqa: F811
    target, _, joint = toy
    bad, _ = decode(target, head_for(target), SAMPLE, [1] * 3000, range(3000), ResampleFromTarget(), SMALL_STATIC)
    assert min(pair_pvalues(bad, joint)) < 1e-6


@pytest.mark.parametrize("shape", [SMALL_TREE, SMALL_STATIC], ids=["dynamic", "static"])
def test_tree_rows_do_not_depend_on_batch_mates(target, shape):
    opts = lg.SamplingOptions(cfg=2.0, top_k=50)
    head = head_for(target)
    batch, _ = decode(target, head, opts, [2, 5, 7], [10, 11, 12], shape=shape)
    alone, _ = decode(target, head, opts, [5], [11], shape=shape)
    assert torch.equal(batch[1], alone[0])
