"""LlamaGen text-to-image network: the release's t2i layout, the prompt mask, the stored null caption,
and speculative decoding / LANTERN / SJD on prompt conditions. CPU, fp32; prompt features here are
random tensors (the T5 path is in test_t2i_text.py)."""
import pytest
import torch

from accel.api import ArgenError
from accel.methods import speculative as sp
from accel.methods.lantern import LanternRule
from accel.models import build_model as registry_build_model
from accel.families import llamagen as lg



def expected_t2i_keys(layers, dim, hidden, caption_dim=2048):
    """The t2i checkpoint layout, written from the release's module tree (gpt.py with model_type t2i)."""
    keys = {"tok_embeddings.weight": (16384, dim), "cls_embedding.cap_proj.fc1.weight": (dim, caption_dim),
            "cls_embedding.cap_proj.fc2.weight": (dim, dim), "cls_embedding.uncond_embedding": (120, caption_dim),
            "norm.weight": (dim,), "output.weight": (16384, dim)}
    for i in range(layers):
        keys.update({f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                     f"layers.{i}.feed_forward.w1.weight": (hidden, dim), f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                     f"layers.{i}.feed_forward.w2.weight": (dim, hidden), f"layers.{i}.attention_norm.weight": (dim,),
                     f"layers.{i}.ffn_norm.weight": (dim,)})
    return keys


@pytest.mark.parametrize("name,px,grid", [("llamagen_t2i_xl", 256, 16), ("llamagen_t2i_xl_512", 512, 32)])
def test_t2i_xl_meta_keys_and_shapes_match_release(name, px, grid):
    """Both released files (Stage I 256 px, Stage II 512 px) have the same keys; only the grid differs."""
    with torch.device("meta"):
        model = registry_build_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_t2i_keys(36, 1280, 3584)
    assert next(model.parameters()).device.type == "meta"
    n = sum(v.numel() for v in model.parameters())
    # GPT-XL's 775M with the caption MLP (2048 -> 1280 -> 1280) in place of the 1001-row class table;
    # the null caption is a buffer, not a parameter
    assert round((n - (1280 * 2048 + 1280 * 1280) + 1001 * 1280) / 1e6) == 775
    assert [k for k, _ in model.named_buffers()] == ["cls_embedding.uncond_embedding"]
    cfg = lg.CONFIGS[name]
    assert cfg.takes_prompts and cfg.image_size == px and cfg.grid == grid and cfg.args.block_size == grid * grid
    assert cfg.cfg == 7.5 and cfg.sampling["top_k"] == 1000 and cfg.args.cls_token_num == 120
    assert model.freqs_cis.shape == (120 + grid * grid, 32, 2)  # the RoPE table follows the grid
    assert torch.all(model.freqs_cis[:120] == 0)


def test_tiny_t2i_configs_keep_the_official_structure():
    for name in ("llamagen_t2i_tiny", "llamagen_t2i_tiny_draft"):
        with torch.device("meta"):
            model = lg.build_model(name)
        a = lg.CONFIGS[name].args
        hidden = model.layers[0].feed_forward.w1.out_features
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_t2i_keys(a.n_layer, a.dim, hidden)
        assert a.block_size == 256 and a.cls_token_num == 120 and lg.CONFIGS[name].random_init_only


def t2i_small(seed, layers=2, dim=32, heads=2, vocab=512, grid=8, T=12, caption_dim=24):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = lg.Transformer(lg.ModelArgs(n_layer=layers, n_head=heads, dim=dim, multiple_of=32, vocab_size=vocab,
                                        block_size=grid * grid, model_type="t2i", cls_token_num=T,
                                        caption_dim=caption_dim))
        m.init_weights(zero_output=False)
    return m.eval()


def prompts(B, T=12, C=24, lengths=(3, 12, 7, 1, 9), seed=0):
    """Left-padded random prompt features, prompt lengths as given, padding zero."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, C, generator=g)
    lens = torch.tensor([lengths[i % len(lengths)] for i in range(B)])
    mask = torch.arange(T)[None] >= (T - lens)[:, None]
    return lg.TextCondition(feats * mask[..., None], mask)


@pytest.fixture(scope="module")
def pair():
    return t2i_small(0), t2i_small(1, layers=1)


def release_mask(cond_mask, S):
    """The release's attention mask: causal, times the prompt mask on the condition columns, then an
    identity diagonal (written from generate.py's description, independently of the model code)."""
    B, T = cond_mask.shape
    causal = torch.tril(torch.ones(S, S))[None].repeat(B, 1, 1)
    causal[:, :, :T] = causal[:, :, :T] * cond_mask.float()[:, None, :]
    eye = torch.eye(S)
    return (causal * (1 - eye) + eye).bool()[:, None]


def test_full_and_cached_forward_follow_the_release_mask(pair):
    model, _ = pair
    B, T, N = 3, 12, 64
    cond = prompts(B)
    tokens = torch.randint(0, 512, (B, N))
    with torch.no_grad():
        h = torch.cat([model.cls_embedding(cond.features), model.tok_embeddings(tokens)], 1)
        freqs = model.freqs_cis[:T + N]
        mask = release_mask(cond.mask, T + N)
        for layer in model.layers:
            h = layer(h, freqs, mask)
        ref = model.output(model.norm(h)).float()
        full = model(tokens, cond.features, cond_mask=cond.mask)
        run = lg.CFGModel(model, lg.SamplingOptions(cfg=1.0), B, T + N, "t")
        first = run.prefill(cond)
        steps = run.decode(tokens[:, :N - 1], torch.arange(N - 1)[None].expand(B, -1))
    assert torch.allclose(full, ref, atol=1e-5)
    assert torch.allclose(first, ref[:, T - 1], atol=1e-5)
    assert torch.allclose(steps, ref[:, T:T + N - 1], atol=1e-5)
    # without the mask the padded positions would matter: the mask is doing something
    assert not torch.allclose(model(tokens, cond.features)[:, T:], ref[:, T:], atol=1e-3)


def test_padding_positions_cannot_reach_the_image(pair):
    """Whatever sits in the padding positions, the image logits are the same (hidden keys)."""
    model, _ = pair
    cond = prompts(4)
    junk = torch.where(cond.mask[..., None], cond.features, torch.randn_like(cond.features) * 5)
    tokens = torch.randint(0, 512, (4, 20))
    with torch.no_grad():
        a = model(tokens, cond.features, cond_mask=cond.mask)[:, 11:]
        b = model(tokens, junk, cond_mask=cond.mask)[:, 11:]
    assert torch.allclose(a, b, atol=1e-5)


def test_null_condition_is_the_stored_embedding_under_the_prompt_mask(pair):
    model, _ = pair
    cond = prompts(2)
    opts = lg.SamplingOptions(cfg=7.5)
    null = model.cls_embedding.uncond_embedding[:12].expand(2, -1, -1)
    assert model.cls_embedding.uncond_embedding.shape == (120, 24)  # the release keeps 120 rows
    with torch.no_grad():
        guided = lg.CFGModel(model, opts, 2, 12 + 64, "t").prefill(cond)
        c = model(torch.zeros(2, 0, dtype=torch.long), cond.features, cond_mask=cond.mask)[:, -1]
        u = model(torch.zeros(2, 0, dtype=torch.long), null, cond_mask=cond.mask)[:, -1]
    assert torch.allclose(guided, u + 7.5 * (c - u), atol=1e-4)
    assert "cls_embedding.uncond_embedding" in model.state_dict()  # saved with the weights


def test_t2i_checkpoint_round_trip_and_strict_keys(tmp_path):
    cpu = torch.device("cpu")
    tiny = lg.load_model("llamagen_t2i_tiny", None, True, cpu)
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    torch.save({"model": sd, "steps": 3}, tmp_path / "t2i.pt")  # the release's DDP container
    again = lg.load_model("llamagen_t2i_tiny", str(tmp_path / "t2i.pt"), False, cpu)
    assert all(torch.equal(again.state_dict()[k], sd[k]) for k in sd)
    bad = dict(sd)
    del bad["cls_embedding.uncond_embedding"]  # the null caption is part of the weights
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(ArgenError, match="uncond_embedding"):
        lg.load_model("llamagen_t2i_tiny", str(tmp_path / "bad.pt"), False, cpu)
    c2i = lg.load_model("llamagen_tiny", None, True, cpu)
    torch.save({"model": c2i.state_dict()}, tmp_path / "c2i.pt")
    with pytest.raises(ArgenError, match="missing keys"):
        lg.load_model("llamagen_t2i_tiny", str(tmp_path / "c2i.pt"), False, cpu)


def test_conditions_of_the_wrong_kind(pair):
    model, _ = pair
    with pytest.raises(ArgenError, match="text-to-image"):
        model.condition_rows(torch.tensor([1, 2]), with_null=False)
    with pytest.raises(ArgenError, match=r"\[B, 12, 24\]"):
        model.condition_rows(lg.TextCondition(torch.zeros(1, 5, 24), torch.ones(1, 5, dtype=torch.bool)), False)
    c2i = lg.load_model("llamagen_tiny", None, True, torch.device("cpu"))
    with pytest.raises(ArgenError, match="class-conditional"):
        c2i.condition_rows(prompts(1), with_null=False)


# ---------------------------------------------------------------------------------------------
# speculative decoding on prompts: greedy equality with plain greedy, batched
# ---------------------------------------------------------------------------------------------
GREEDY = lg.SamplingOptions(cfg=7.5, top_k=100, greedy=True)


def gens(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


@pytest.mark.parametrize("make", [
    lambda t, d: (sp.ModelDrafter(d, 3), None),
    lambda t, d: (sp.ModelDrafter(t, 4), None),
    lambda t, d: (sp.JacobiDrafter(6), None),
    lambda t, d: (sp.ModelDrafter(d, 3), LanternRule.from_codebook(torch.randn(512, 8), 20, 0.0)),
    lambda t, d: (sp.JacobiDrafter(4, "repeat"), LanternRule.from_codebook(torch.randn(512, 8), 20, 0.5, lam=1.0)),
], ids=["model", "self", "sjd", "lantern-delta0", "sjd-lantern-lambda1"])
def test_greedy_speculative_equals_plain_greedy_on_prompts(pair, make, tmp_path, monkeypatch):
    monkeypatch.setattr("accel.checkpoints.CACHE_DIR", tmp_path)
    target, small = pair
    drafter, rule = make(target, small)
    cond = prompts(5)
    with torch.no_grad():
        ref = lg.generate_tokens(target, cond, GREEDY, gens(range(5)))
        dec = sp.SpeculativeDecoder(target, drafter, rule or sp.ExactRule(), GREEDY)
        seq, c = dec.generate(cond, gens(range(5)))
    assert torch.equal(seq, ref)
    assert 1.0 <= c["accepted_length"] <= drafter.gamma + 1
    if isinstance(drafter, sp.ModelDrafter) and drafter.model is target:
        assert c["acceptance_rate"] == 1.0  # self-drafting accepts everything, with prompt conditions too


def test_sampled_rows_do_not_depend_on_batch_mates(pair):
    target, small = pair
    opts = lg.SamplingOptions(cfg=7.5, top_k=50)
    cond = prompts(3)
    with torch.no_grad():
        plain = lg.generate_tokens(target, cond, opts, gens([4, 5, 6]))
        alone = lg.generate_tokens(target, cond.select([1]), opts, gens([5]))
        dec = sp.SpeculativeDecoder(target, sp.ModelDrafter(small, 3), sp.ExactRule(), opts)
        spec3, _ = dec.generate(cond, gens([4, 5, 6]))
        spec1, _ = dec.generate(cond.select([1]), gens([5]))
    assert torch.equal(plain[1], alone[0])
    assert torch.equal(spec3[1], spec1[0])


def test_drafters_must_take_the_same_condition():
    with pytest.raises(ArgenError, match="text-to-image"):
        sp.check_drafter_config("llamagen_t2i_tiny", "llamagen_tiny_draft")
    with pytest.raises(ArgenError, match="conditioning"):
        sp.check_compatible(t2i_small(0, vocab=16384, grid=16), lg.load_model("llamagen_tiny_draft", None, True, torch.device("cpu")))
