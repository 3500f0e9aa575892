"""LANTERN's EAGLE drafter (accel/methods/eagle.py) and the target hooks a draft tree needs: features after
the final norm, tree-masked decoding with explicit positions, and moving an accepted path in the KV cache."""
from __future__ import annotations

import pytest
import torch

from accel.api import seeded_init
from accel.checkpoints import save_safetensors
from accel.errors import ArgenError
from accel.families import llamagen as lg
from accel.methods.eagle import EagleConfig, EagleHead, build_eagle_head, load_eagle_head

# the release's drafter for LlamaGen-T2I (GPT-XL width; data/configs/llamagen_t2i_config.json, one layer)
RELEASE_KEYS = {
    "embed_tokens.weight": (16384, 1280),
    "fc.weight": (1280, 2560), "fc.bias": (1280,),
    "layers.0.self_attn.q_proj.weight": (1280, 1280), "layers.0.self_attn.k_proj.weight": (1280, 1280),
    "layers.0.self_attn.v_proj.weight": (1280, 1280), "layers.0.self_attn.o_proj.weight": (1280, 1280),
    "layers.0.mlp.gate_proj.weight": (3584, 1280), "layers.0.mlp.up_proj.weight": (3584, 1280),
    "layers.0.mlp.down_proj.weight": (1280, 3584), "layers.0.post_attention_layernorm.weight": (1280,),
}


def test_the_drafter_of_llamagen_t2i_xl_has_the_release_keys():
    with torch.device("meta"):
        head = EagleHead(EagleConfig.of_target(lg.get_config("llamagen_t2i_xl").args))
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == RELEASE_KEYS
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == 23_595_520  # the embedding is frozen


def _tiny_target() -> lg.Transformer:
    with seeded_init(0):
        model = lg.Transformer(lg.get_config("llamagen_tiny").args)
        model.init_weights(zero_output=False)
    return model.eval()


def test_drafter_weights_load_strictly_and_name_what_is_wrong(tmp_path):
    target = _tiny_target()
    with seeded_init(1):
        head = build_eagle_head(target)
    assert torch.equal(head.embed_tokens.weight, target.tok_embeddings.weight)
    save_safetensors(head, tmp_path / "eagle.safetensors")
    loaded = load_eagle_head(target, tmp_path / "eagle.safetensors", torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), loaded.state_dict().values()))
    state = head.state_dict()
    del state["fc.bias"]
    state["lm_head.weight"] = torch.zeros(3)
    save_safetensors(state, tmp_path / "wrong.safetensors")
    with pytest.raises(ArgenError) as e:
        load_eagle_head(target, tmp_path / "wrong.safetensors", torch.device("cpu"))
    assert "wrong.safetensors" in str(e.value) and "fc.bias" in str(e.value) and "lm_head.weight" in str(e.value)


def test_drafting_with_a_cache_equals_the_training_forward():
    """Pairs fed one by one through the drafter's cache give the causal full-sequence forward's outputs."""
    target = _tiny_target()
    with seeded_init(2):
        head = build_eagle_head(target).eval()
    B, T, H = 2, 7, target.config.dim
    feats, tokens = torch.randn(B, T, H), torch.randint(0, target.vocab_size, (B, T))
    full = head(feats, tokens)
    cache = head.new_cache(B, T, torch.float32, torch.device("cpu"))
    for s in range(T):
        cache.kv_len = s + 1
        pos = torch.full((B, 1), s)
        step = head(feats[:, s:s + 1], tokens[:, s:s + 1], rope_pos=pos, cache=cache, slots=pos,
                    mask=torch.ones(B, 1, 1, s + 1, dtype=torch.bool))
        torch.testing.assert_close(step[:, 0], full[:, s], rtol=1e-4, atol=1e-5)


def _prefilled(target: lg.Transformer, labels: torch.Tensor, max_seq: int) -> lg.KVCache:
    cache = lg.KVCache(target.config, len(labels), max_seq, torch.float32, torch.device("cpu"))
    target(None, labels, torch.arange(target.cls_token_num), cache=cache)
    return cache


def test_a_tree_decode_gives_each_node_the_logits_of_its_own_path():
    """One tree-masked forward over a branching tree = decoding each node's root path on its own; the
    features hook returns the final-norm hidden states of the full forward."""
    target = _tiny_target()
    labels = torch.tensor([3, 7])
    prefix = torch.randint(0, target.vocab_size, (2, 5))
    # a tree after the prefix: node 0 the root (the last sampled token), 1-2 its children, 3 a child of 1,
    # 4 a child of 3, 5 a child of 2
    parent = [-1, 0, 0, 1, 3, 2]
    depth = [0, 1, 1, 2, 3, 2]
    nodes = torch.randint(0, target.vocab_size, (2, len(parent)))
    ctx = target.cls_token_num + prefix.shape[1]          # slots holding condition + prefix
    cache = _prefilled(target, labels, ctx + len(parent))
    target(prefix, None, torch.arange(target.cls_token_num, ctx), cache=cache)
    ancestors = torch.eye(len(parent), dtype=torch.bool)
    for i, p in enumerate(parent):
        if p >= 0:
            ancestors[i] |= ancestors[p]
    kv_len = ctx + len(parent)
    mask = torch.zeros(2, 1, len(parent), kv_len, dtype=torch.bool)
    mask[..., :ctx] = True
    mask[..., ctx:] = ancestors
    slots = torch.arange(ctx, kv_len)[None].expand(2, -1)
    rope = (ctx + torch.tensor(depth))[None].expand(2, -1)
    logits, feats = target(nodes, None, slots, cache=cache, rope_pos=rope, attn_mask=mask, features=True)
    for i in range(len(parent)):
        path, j = [], i
        while j >= 0:
            path.insert(0, j)
            j = parent[j]
        seq = torch.cat([prefix, nodes[:, path]], 1)
        full, hidden = target(seq, labels, features=True)
        torch.testing.assert_close(logits[:, i], full[:, -1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(feats[:, i], hidden[:, -1], rtol=1e-4, atol=1e-4)
    # keep the path 0 -> 1 -> 3 -> 4: moved to the next slots, the cache continues as a sequential one
    path = [0, 1, 3, 4]
    cache.move(torch.tensor([path]).expand(2, -1) + ctx, torch.arange(ctx, ctx + 4)[None].expand(2, -1))
    nxt = torch.randint(0, target.vocab_size, (2, 1))
    step = target(nxt, None, torch.tensor([ctx + 4]), cache=cache)
    full = target(torch.cat([prefix, nodes[:, path], nxt], 1), labels)
    torch.testing.assert_close(step[:, 0], full[:, -1], rtol=1e-4, atol=1e-4)
