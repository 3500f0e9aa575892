"""Plumbing tests of the T5 prompt path with a tiny, randomly initialised T5 built in this process.

The tiny T5 (accel.text_encoder.write_random_t5: 2 layers, FLAN-T5-XL's 2048-dim features, a
character-level tokenizer with T5's special tokens) is saved to a temporary folder and loaded
through the same local-folder path as google/flan-t5-xl. Its features mean nothing; these tests
check batching, the release's padding and masking, truncation, errors, and the generator around it.
"""
import logging

import numpy as np
import pytest
import torch

from accel.api import ArgenError, load_generator
from accel.text_encoder import T5TextEncoder, clean_prompt, left_pad, write_random_t5

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return write_random_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def encoder(t5_dir):
    return T5TextEncoder(t5_dir, CPU)


def test_left_pad_moves_prompt_tokens_to_the_end():
    feats = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1) + 1  # rows 1..5 and 6..10
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    out, m = left_pad(feats, mask)
    assert m.tolist() == [[False, False, False, True, True], [True] * 5]
    assert out[0, :, 0].tolist() == [0, 0, 0, 1, 2]          # the prompt's two tokens, in order, at the end
    assert out[1, :, 0].tolist() == [6, 7, 8, 9, 10]         # a full row is unchanged


def test_encode_matches_a_direct_transformers_call(encoder, t5_dir):
    """Batched encode() = the tokenizer and T5 encoder called directly, right padding turned into left."""
    from transformers import AutoTokenizer, T5EncoderModel

    texts = ["a red cat on a mat", "two dogs", "An astronaut riding a horse in the forest."]
    enc = encoder.encode(texts)
    assert enc.features.shape == (3, 120, 2048) and enc.mask.shape == (3, 120) and enc.mask.dtype == torch.bool
    tok = AutoTokenizer.from_pretrained(str(t5_dir))
    model = T5EncoderModel.from_pretrained(str(t5_dir)).eval()
    for i, t in enumerate(texts):
        ids = tok(clean_prompt(t), return_tensors="pt")["input_ids"]     # no padding at all
        assert ids[0, -1].item() == tok.eos_token_id
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0]
        n = ids.shape[1]
        assert enc.lengths[i] == n and not enc.truncated[i]
        assert enc.mask[i].sum() == n and enc.mask[i, -n:].all()
        assert torch.allclose(enc.features[i, -n:], ref, atol=1e-4)    # masking made padding irrelevant
        assert torch.all(enc.features[i, :-n] == 0)
    one = encoder.encode(texts[1:2])
    assert torch.allclose(one.features[0], enc.features[1], atol=1e-5)  # no dependence on batch mates


def test_long_prompts_are_truncated_with_a_counting_warning(t5_dir, caplog):
    enc_obj = T5TextEncoder(t5_dir, CPU)
    long = "a very long prompt " * 20                      # ~380 characters: far past 120 tokens
    exact = "x" * 118                                        # 1 metaspace + 118 chars + end = 120: fits
    over = "x" * 119                                         # 121 tokens: one too many
    with caplog.at_level(logging.WARNING, logger="argen.text"):
        enc = enc_obj.encode([long, "short", exact, over])
    assert enc.truncated == [True, False, False, True]
    assert enc.lengths[2] == 120 and enc.lengths[3] == 121
    assert enc.mask[0].all() and enc.mask[3].all() and enc.mask[2].all()
    msgs = [r.getMessage() for r in caplog.records if r.name == "argen.text"]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 4 prompts") and "120 tokens" in msgs[0]
    with caplog.at_level(logging.WARNING, logger="argen.text"):
        enc_obj.encode([long])
    assert "(3 of 5 prompts so far)" in caplog.records[-1].getMessage()


def test_prompt_cleaning():
    assert clean_prompt("  A  Photo of a CAT.  ") == "a photo of a cat."
    assert clean_prompt("cats&amp;dogs \u2014 \u201cquoted\u201d") == "cats dogs - \"quoted\""
    assert clean_prompt("a,b.c red+fox %20 (big)") == "a, b. c red fox big"
    assert clean_prompt("1984") == "1984"
    # the release's rules that ordinary prompts meet (its cleaner runs twice)
    assert clean_prompt("A red-and-white striped t-shirt on a well-lit table") == \
        "a red and white striped t shirt on a well lit table"                   # more than three dashes
    assert clean_prompt("a well-lit room") == "a well-lit room"                 # three or fewer stay
    assert clean_prompt('"A photo of a cat"') == "a photo of a cat"
    assert clean_prompt("a dog, ") == "a dog"
    assert clean_prompt("a 2x4 board by @john #12 at 1920x1080") == "a board by at"


@pytest.mark.parametrize("path,match", [
    (None, "hf download google/flan-t5-xl"),
    ("s3://bucket/flan-t5-xl", "local folder, not a URI"),
    ("/nonexistent/flan-t5-xl", "is not a folder"),
])
def test_missing_text_encoder_says_how_to_provide_it(path, match):
    with pytest.raises(ArgenError, match=match) as e:
        T5TextEncoder(path, CPU)
    assert "model.text_encoder=" in str(e.value)


def test_bad_text_encoder_folders(tmp_path, t5_dir):
    with pytest.raises(ArgenError, match="no config.json"):
        T5TextEncoder(tmp_path, CPU)
    narrow = write_random_t5(tmp_path / "narrow", d_model=64)
    with pytest.raises(ArgenError, match="64-dim features but the generator expects caption_dim=2048"):
        T5TextEncoder(narrow, CPU)
    enc = T5TextEncoder(t5_dir, CPU)
    with pytest.raises(ArgenError, match="prompt 1 .* is empty"):
        enc.encode(["a cat", "   "])
    with pytest.raises(ArgenError, match="empty after cleaning"):
        enc.encode(["(*)"])
    with pytest.raises(ArgenError, match="not text"):
        enc.encode([5])


# ---------------------------------------------------------------------------------------------
# the generator: prompts -> images through T5, the tiny t2i model and the VQ decoder
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen(t5_dir):
    return load_generator("llamagen_t2i_tiny", device="cpu", random_init=True, text_encoder=str(t5_dir), greedy=True)


def test_generator_end_to_end(gen):
    out = gen.generate(["a red cat on a mat", "a blue car " * 30], seeds=[0, 1])
    assert out.images.shape == (2, 256, 256, 3) and out.images.dtype == np.uint8
    s = out.stats
    assert s["flops"] == pytest.approx(s["flops_target"] + s["flops_tokenizer"] + s["flops_text_encoder"])
    assert s["flops_text_encoder"] > 0 and s["prompt_truncated_fraction"] == 0.5
    assert gen.conditions_are_prompts and gen.opts.cfg == 7.5 and gen.opts.top_k == 1000
    # the prompt matters; the same prompt and seed give the same image in another batch
    other = gen.generate(["a green tree", "a red cat on a mat"], seeds=[0, 0])
    assert (other.images[1] == out.images[0]).all()
    assert (other.images[0] != out.images[0]).any()


@pytest.mark.slow
@pytest.mark.parametrize("accel,extra", [
    ("speculative", {"gamma": 3}),
    ("lantern", {"lantern_delta": 0.0, "lantern_k": 5}),
    ("sjd", {"window": 8}),
    ("lantern", {"drafter": "eagle", "lantern_delta": 0.0, "lantern_k": 5, "tree_tokens": 12, "tree_depth": 3,
                 "tree_top_k": 4}),  # the caption positions enter the EAGLE drafter as (feature, token 0) pairs
])
def test_greedy_accelerated_generators_give_identical_images(gen, t5_dir, accel, extra, tmp_path, monkeypatch):
    """Plumbing: load_generator(accel=...) on the tiny t2i model (default drafter llamagen_t2i_tiny_draft)."""
    monkeypatch.setattr("accel.checkpoints.CACHE_DIR", tmp_path)
    texts = ["a red cat on a mat", "two dogs playing"]
    base = gen.generate(texts, seeds=[3, 4])
    fast = load_generator("llamagen_t2i_tiny", accel=accel, device="cpu", random_init=True,
                          text_encoder=str(t5_dir), greedy=True, **extra).generate(texts, seeds=[3, 4])
    assert (fast.images == base.images).all()
    assert fast.stats["target_forwards_per_image"] <= 256


def test_generator_input_errors(gen, t5_dir):
    with pytest.raises(ArgenError, match="takes text prompts"):
        gen.generate([3, 4])
    with pytest.raises(ArgenError, match="hf download google/flan-t5-xl"):
        load_generator("llamagen_t2i_tiny", device="cpu", random_init=True)
    with pytest.raises(ArgenError, match="unknown option"):
        load_generator("llamagen_tiny", device="cpu", random_init=True, text_encoder=str(t5_dir))
    with pytest.raises(ArgenError, match="vq_ds16_t2i.pt"):
        load_generator("llamagen_t2i_xl", device="cpu", checkpoint="/x/t2i_XL_stage1_256.pt",
                       text_encoder=str(t5_dir))
    with pytest.raises(ArgenError, match="clean_prompts"):
        load_generator("llamagen_t2i_tiny", device="cpu", random_init=True, text_encoder=str(t5_dir),
                       clean_prompts="yes")
    with pytest.raises(ArgenError, match="text-to-image"):
        load_generator("llamagen_t2i_tiny", accel="speculative", drafter="llamagen_tiny_draft", device="cpu",
                       random_init=True, text_encoder=str(t5_dir))
