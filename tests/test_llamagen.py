"""LlamaGen model, VQ-16 tokenizer and the plain (official) sampling loop, on CPU in fp32."""

import pytest
import torch

from accel.api import ArgenError, load_generator
from accel.models import build_model as registry_build_model
from accel.families import llamagen as lg
from accel.families.llamagen import network as gpt
from accel.tokenizers import build_tokenizer


# The release's shapes, written from the documented table (layers, dim, heads; FFN hidden =
# multiple of 256 above 8*dim/3), not from the code under test.
OFFICIAL = {  # name: (layers, dim, heads, ffn hidden, params in millions as in the README)
    "b": (12, 768, 12, 2048, 111), "l": (24, 1024, 16, 2816, 343), "xl": (36, 1280, 20, 3584, 775),
    "xxl": (48, 1536, 24, 4096, 1411), "3b": (24, 3200, 32, 8704, 3097),
}


def expected_keys(layers, dim, hidden):
    keys = {"tok_embeddings.weight": (16384, dim), "cls_embedding.embedding_table.weight": (1001, dim),
            "norm.weight": (dim,), "output.weight": (16384, dim)}
    for i in range(layers):
        keys.update({f"layers.{i}.attention.wqkv.weight": (3 * dim, dim), f"layers.{i}.attention.wo.weight": (dim, dim),
                     f"layers.{i}.feed_forward.w1.weight": (hidden, dim), f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                     f"layers.{i}.feed_forward.w2.weight": (dim, hidden), f"layers.{i}.attention_norm.weight": (dim,),
                     f"layers.{i}.ffn_norm.weight": (dim,)})
    return keys


@pytest.mark.parametrize("size", list(OFFICIAL))
@pytest.mark.parametrize("suffix,grid", [("", 16), ("_384", 24)])
def test_meta_keys_and_shapes_match_release(size, suffix, grid):
    layers, dim, heads, hidden, millions = OFFICIAL[size]
    name = f"llamagen_{size}{suffix}"
    with torch.device("meta"):
        model = registry_build_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_keys(layers, dim, hidden)
    assert next(model.parameters()).device.type == "meta"
    assert round(sum(v.numel() for v in model.parameters()) / 1e6) == millions
    cfg = lg.CONFIGS[name]
    assert cfg.args.block_size == grid * grid and cfg.image_size == 16 * grid
    assert model.layers[0].attention.n_head == heads


def test_tiny_configs_keep_the_official_structure():
    for name in ("llamagen_tiny", "llamagen_tiny_draft"):
        with torch.device("meta"):
            model = lg.build_model(name)
        a = lg.CONFIGS[name].args
        hidden = model.layers[0].feed_forward.w1.out_features
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
            k: v for k, v in expected_keys(a.n_layer, a.dim, hidden).items()}
        assert a.block_size == 256 and a.vocab_size == 16384


def test_vq16_meta_keys_and_shapes():
    with torch.device("meta"):
        vq = build_tokenizer("llamagen_vq16")
    sd = {k: tuple(v.shape) for k, v in vq.state_dict().items()}
    assert sd["quantize.embedding.weight"] == (16384, 8)
    assert sd["quantize.codebook_used"] == (65536,)
    assert sd["quant_conv.weight"] == (8, 256, 1, 1) and sd["post_quant_conv.weight"] == (256, 8, 1, 1)
    assert sd["encoder.conv_in.weight"] == (128, 3, 3, 3) and sd["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert sd["encoder.conv_blocks.4.attn.1.q.weight"] == (512, 512, 1, 1)
    assert sd["decoder.conv_blocks.0.res.2.conv2.weight"] == (512, 512, 3, 3)
    assert sd["encoder.conv_blocks.0.downsample.conv.weight"] == (128, 128, 3, 3)
    assert sd["decoder.conv_blocks.3.upsample.conv.weight"] == (128, 128, 3, 3)
    assert sd["encoder.conv_blocks.2.res.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in sd  # the last level keeps its size
    assert round(sum(v.numel() for v in vq.parameters()) / 1e6) == 72  # "vq_ds16_c2i.pt (72M)"


@pytest.fixture(scope="module")
def tiny():
    return lg.load_model("llamagen_tiny", None, True, torch.device("cpu"))


@pytest.fixture(scope="module")
def mini():
    """A small-vocabulary model of the same structure (8x8 grid), for loops that run many steps."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = lg.Transformer(lg.ModelArgs(n_layer=2, n_head=2, dim=32, multiple_of=32, vocab_size=512,
                                        block_size=64, num_classes=10))
        m.init_weights(zero_output=False)
    return m.eval()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_rope_is_2d_and_zero_on_the_condition_token():
    grid, hd = 4, 16
    table = gpt.precompute_freqs_cis_2d(grid, hd, 10000, cls_token_num=1)
    assert table.shape == (1 + grid * grid, hd // 2, 2)
    assert torch.all(table[0] == 0)
    # independent check: pair j < hd/4 turns with the row, pair j >= hd/4 with the column
    quarter = hd // 4
    inv = 10000 ** (-torch.arange(quarter).float() * 2 / (hd // 2))
    for pos in range(grid * grid):
        r, c = divmod(pos, grid)
        angle = torch.cat([r * inv, c * inv])
        assert torch.allclose(table[1 + pos, :, 0], torch.cos(angle), atol=1e-6)
        assert torch.allclose(table[1 + pos, :, 1], torch.sin(angle), atol=1e-6)
    x = torch.randn(1, 1 + grid * grid, 2, hd)
    y = gpt.apply_rotary_emb(x, table)
    assert torch.all(y[:, 0] == 0)  # condition q/k vanish
    # interleaved pairs: rotation of (x0, x1) by the angle of pair 0
    a = torch.atan2(table[5, 0, 1], table[5, 0, 0])
    z = torch.complex(x[0, 5, 0, 0], x[0, 5, 0, 1]) * torch.exp(1j * a)
    assert torch.allclose(y[0, 5, 0, :2], torch.stack([z.real, z.imag]), atol=1e-5)


def test_cached_decoding_equals_full_forward(tiny):
    torch.manual_seed(0)
    B, N = 3, tiny.block_size
    labels = torch.tensor([3, 7, 999])
    tokens = torch.randint(0, 16384, (B, N))
    with torch.no_grad():
        full = tiny(tokens, labels)  # [B, 1 + N, V]
        opts = lg.SamplingOptions(cfg=1.0)
        run = lg.CFGModel(tiny, opts, B, 1 + N, "t")
        first = run.prefill(labels)
        # one token at a time for the first 20 tokens
        step = [run.decode(tokens[:, t:t + 1], torch.full((B, 1), t))[:, 0] for t in range(20)]
        # then chunks of different length per call, rows at different offsets (as in verification)
        offs = torch.tensor([20, 20, 20])
        chunk = run.decode(tokens[:, 20:31], offs[:, None] + torch.arange(11)[None])
    assert torch.allclose(first, full[:, 0], atol=1e-5)
    assert torch.allclose(torch.stack(step, 1), full[:, 1:21], atol=1e-5)
    assert torch.allclose(chunk, full[:, 21:32], atol=1e-5)


def test_per_row_positions_and_rollback(tiny):
    """Rows at different lengths in one forward, and stale entries past a row's length are ignored."""
    torch.manual_seed(1)
    B, N = 2, tiny.block_size
    labels = torch.tensor([1, 2])
    tokens = torch.randint(0, 16384, (B, N))
    with torch.no_grad():
        full = tiny(tokens, labels)
        run = lg.CFGModel(tiny, lg.SamplingOptions(cfg=1.0), B, 1 + N + 8, "t")
        run.prefill(labels)
        run.decode(tokens[:, :10], torch.arange(10)[None].expand(B, -1))
        # write garbage at token indices 10..17 for both rows (a rejected draft)
        run.decode(torch.randint(0, 16384, (B, 8)), 10 + torch.arange(8)[None].expand(B, -1))
        # row 0 resumes at 10, row 1 at 5 (rolled back further): 3 tokens each
        start = torch.tensor([10, 5])
        idx = start[:, None] + torch.arange(3)[None]
        out = run.decode(tokens.gather(1, idx), idx)
    assert torch.allclose(out[0], full[0, 11:14], atol=1e-5)
    assert torch.allclose(out[1], full[1, 6:9], atol=1e-5)


def test_cfg_filtering_and_interval():
    cond, unc = torch.randn(2, 3, 50), torch.randn(2, 3, 50)
    opts = lg.SamplingOptions(cfg=4.0)
    assert torch.allclose(lg.guided_logits(torch.cat([cond, unc]), opts, 5), unc + 4.0 * (cond - unc))
    opts = lg.SamplingOptions(cfg=4.0, cfg_interval=3)
    # the official decode step i produces token i + 1 and stops guiding once i > cfg_interval
    assert opts.uses_cfg(0) and opts.uses_cfg(4) and not opts.uses_cfg(5)
    idx = torch.tensor([[4, 5, 6], [0, 8, 9]])  # indices of the predicted tokens
    mixed = lg.guided_logits(torch.cat([cond, unc]), opts, idx)
    assert torch.allclose(mixed[0, 0], (unc + 4 * (cond - unc))[0, 0])  # token 4 guided
    assert torch.allclose(mixed[0, 1], cond[0, 1])                        # token 5 not
    assert torch.allclose(lg.guided_logits(cond, lg.SamplingOptions(cfg=1.0), 0), cond)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    topk = lg.top_k_top_p_filtering(logits, top_k=2)
    assert torch.isfinite(topk).tolist() == [[False, True, False, True, False]]
    p = logits.softmax(-1)[0]  # sorted: 1 (0.64), 3 (0.24), 2 (0.09), ...
    topp = lg.top_k_top_p_filtering(logits, top_p=0.7)
    assert torch.isfinite(topp).tolist() == [[False, True, False, True, False]]  # keeps the crossing token
    assert p[1] < 0.7 < p[1] + p[3]
    probs = lg.logits_to_probs(logits, lg.SamplingOptions(temperature=0.5, top_k=3))
    ref = torch.tensor([[float("-inf"), 6.0, 2.0, 4.0, float("-inf")]]).softmax(-1)
    assert torch.allclose(probs, ref)


def test_plain_loop_matches_a_naive_full_forward_loop(mini):
    """The cached official loop with CFG, top-k and cfg_interval equals a loop that recomputes the whole
    sequence with full (uncached) forwards."""
    opts = lg.SamplingOptions(cfg=3.0, cfg_interval=40, top_k=50, temperature=0.9, greedy=True)
    labels = torch.tensor([4, 6])
    with torch.no_grad():
        seq = lg.generate_tokens(mini, labels, opts, gens([0, 1]))
        both = torch.cat([labels, torch.full_like(labels, 10)])
        ref = torch.zeros(2, 0, dtype=torch.long)
        for t in range(64):
            logits = mini(torch.cat([ref, ref]), both)[:, -1]
            cond, unc = logits.chunk(2)
            g = unc + 3.0 * (cond - unc) if t - 1 <= 40 else cond
            ref = torch.cat([ref, lg.logits_to_probs(g, opts).argmax(-1, keepdim=True)], 1)
    assert torch.equal(seq, ref)


def test_sampling_is_seeded_per_sample(mini):
    opts = lg.SamplingOptions(cfg=2.0, top_k=100)
    with torch.no_grad():
        a = lg.generate_tokens(mini, torch.tensor([5, 9, 5]), opts, gens([11, 12, 13]))
        b = lg.generate_tokens(mini, torch.tensor([9]), opts, gens([12]))
        c = lg.generate_tokens(mini, torch.tensor([5]), opts, gens([11]))
    assert torch.equal(a[1], b[0]) and torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[2])  # same class, other seed
    assert int(a.min()) >= 0 and int(a.max()) < 512


def test_release_draw_reproduces_the_release_sampler_for_a_seed(mini):
    """draw=release: the release's sampler (temperature, top-k, softmax, torch.multinomial on the generator
    seeded with the sample's seed), written here with full uncached forwards, gives the same tokens at batch 1;
    in a batch, each row still draws from its own generator only."""
    opts = lg.SamplingOptions(cfg=3.0, top_k=50, temperature=0.9, draw="release")
    with torch.no_grad():
        seq = lg.generate_tokens(mini, torch.tensor([4]), opts, gens([7]))
        rng = torch.Generator().manual_seed(7)
        both, ref = torch.tensor([4, 10]), torch.zeros(1, 0, dtype=torch.long)
        for t in range(64):
            cond, unc = mini(torch.cat([ref, ref]), both)[:, -1].chunk(2)
            logits = (unc + 3.0 * (cond - unc)) / 0.9
            kth = torch.topk(logits, 50).values[:, -1:]
            probs = logits.masked_fill(logits < kth, float("-inf")).softmax(-1)
            ref = torch.cat([ref, torch.multinomial(probs, num_samples=1, generator=rng)], 1)
        assert torch.equal(seq, ref)
        argen = lg.generate_tokens(mini, torch.tensor([4]), lg.SamplingOptions(cfg=3.0, top_k=50, temperature=0.9),
                                   gens([7]))
        assert not torch.equal(argen, seq)  # the default draw is another (cheaper) one
        batch = lg.generate_tokens(mini, torch.tensor([5, 4, 5]), opts, gens([11, 7, 13]))
    assert torch.equal(batch[1], seq[0]) and not torch.equal(batch[0], batch[2])


def test_flop_formula_matches_torch_counter(tiny):
    from torch.utils.flop_counter import FlopCounterMode

    from accel.flops import attention

    tokens = torch.randint(0, 16384, (2, 15))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny(tokens, torch.tensor([1, 2]))
    # torch's counter does not see the CPU SDPA kernel: compare the rest, then attention on its own
    attn = tiny.config.n_layer * 2 * attention(16, 16, tiny.config.dim)
    assert tiny.forward_flops(2, 16, 16) - attn == pytest.approx(counter.get_total_flops(), rel=1e-9)
    q, k, v = torch.randn(3, 2, 4, 16, 16).unbind(0)  # rows, heads, tokens, head_dim
    with FlopCounterMode(display=False) as counter:
        (q @ k.transpose(-1, -2)).softmax(-1) @ v
    assert 2 * attention(16, 16, 4 * 16) == counter.get_total_flops()


def test_generator_end_to_end_and_stats():
    gen = load_generator("llamagen_tiny", accel="none", device="cpu", random_init=True, cfg=2.0, top_k=200)
    out = gen.generate([1, 2], seeds=[0, 1])
    assert out.images.shape == (2, 256, 256, 3) and out.images.dtype.name == "uint8"
    s = out.stats
    assert s["target_forwards_per_image"] == 256 and s["accepted_length"] == 1.0
    assert s["flops"] == pytest.approx(s["flops_target"] + s["flops_tokenizer"])
    assert s["flops_target"] > 0 and gen.family == "llamagen" and gen.image_size == 256
    again = load_generator("llamagen_tiny", accel="none", device="cpu", random_init=True, cfg=2.0, top_k=200)
    alone = again.generate([2], seeds=[1]).images[0].astype(int)  # same seeded weights, batch of one
    assert abs(alone - out.images[1].astype(int)).max() <= 1  # decoder convs differ in the last bits by batch


def test_checkpoint_round_trip_and_wrong_keys(tmp_path, tiny):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    torch.save({"model": sd, "steps": 5}, tmp_path / "ddp.pt")   # DDP layout
    torch.save(sd, tmp_path / "fsdp.pt")                          # FSDP: a bare state dict
    for f in ("ddp.pt", "fsdp.pt"):
        m = lg.load_model("llamagen_tiny", str(tmp_path / f), False, torch.device("cpu"))
        assert all(torch.equal(m.state_dict()[k], sd[k]) for k in sd)
    bad = dict(sd)
    bad["layers.0.attention.wqkv.bias"] = torch.zeros(3)
    del bad["norm.weight"]
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(ArgenError, match=r"norm\.weight.*wqkv\.bias|missing keys: norm\.weight"):
        lg.load_model("llamagen_tiny", str(tmp_path / "bad.pt"), False, torch.device("cpu"))


def test_vq_checkpoint_strict(tmp_path):
    from accel.tokenizers.vq import load_tokenizer

    vq = load_tokenizer(None, torch.device("cpu"), random_init=True, **lg.TINY_TOKENIZER)
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    again = load_tokenizer(str(tmp_path / "vq.pt"), torch.device("cpu"), **lg.TINY_TOKENIZER)
    codes = torch.randint(0, 16384, (1, 256))
    with torch.no_grad():
        assert torch.equal(vq.decode_code(codes, (1, 8, 16, 16)), again.decode_code(codes, (1, 8, 16, 16)))
    with pytest.raises(ArgenError, match="missing keys"):
        load_tokenizer(str(tmp_path / "vq.pt"), torch.device("cpu"))  # the full-size layout
    with pytest.raises(ArgenError, match="code indices"):
        vq.decode_code(torch.tensor([[16384] * 256]), (1, 8, 16, 16))


def test_vq_codebook_matching_is_by_cosine():
    from accel.tokenizers.vq import VectorQuantizer

    q = VectorQuantizer(4, 2)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [0.0, -1.0]]))
    z = torch.tensor([[0.1, 0.9], [3.0, 0.2]]).t().reshape(1, 2, 1, 2)  # two pixels
    assert q(z).tolist() == [[1, 0]]  # nearest after L2 normalisation, whatever the norm
    assert torch.allclose(q.get_codebook_entry(torch.tensor([[1]]), (1, 2, 1, 1)).flatten(), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="llamagen_b"), "no checkpoint"),
    (dict(name="llamagen_tiny"), "random_init=True"),
    (dict(name="llamagen_tiny", random_init=True, top_k=-1), "top_k=-1"),
    (dict(name="llamagen_tiny", random_init=True, top_p=0.0), "top_p=0.0"),
    (dict(name="llamagen_tiny", random_init=True, temperature=-1.0), "temperature=-1.0"),
    (dict(name="llamagen_tiny", random_init=True, temperature="hot"), "temperature='hot' is not a number"),
    (dict(name="llamagen_tiny", random_init=True, top_k=1000.5), "top_k=1000.5 is not a whole number"),
    (dict(name="llamagen_tiny", random_init=True, greedy="no"), "greedy='no' is not true or false"),
    (dict(name="llamagen_tiny", random_init=True, lantern_k=3), "unknown option"),
    (dict(name="llamagen_tiny", random_init=True, accel="fastvar"), "fastvar"),
    (dict(name="llamagen_q"), "unknown model"),
])
def test_bad_construction(kwargs, match):
    kwargs = dict(kwargs)
    with pytest.raises(ArgenError, match=match):
        load_generator(kwargs.pop("name"), device="cpu", **kwargs)


def test_bad_class_id():
    gen = load_generator("llamagen_tiny", device="cpu", random_init=True)
    with pytest.raises(ArgenError, match="class id 1000"):
        gen.generate([3, 1000])
    with pytest.raises(ArgenError, match="not a class id"):
        gen.generate(["cat"])
