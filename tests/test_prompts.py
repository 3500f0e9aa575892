"""Prompt runs: prompt files, tar members and keys, the worker's CLIP record, and `argen generate` with
the tiny t2i model. The T5 encoder and the CLIP model are tiny random ones built here (plumbing: their
numbers mean nothing)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from accel.api import ArgenError
from pipeline.plan import ShardTask, build_plan, read_conditions_file, sample_seed
from pipeline.shards import ShardTarWriter, iter_tar, read_shard, sample_metadata


PROMPTS = ["a red cat on a mat", "1984", "un café à Paris, l'été", "slashes/../and\\back \"quotes\"",
           "two lines\nin one prompt"]


def cfg(**over):
    base = {
        "seed": 0, "batch_size": 2, "device": "cpu",
        "model": {"name": "llamagen_t2i_tiny", "checkpoint": None, "tokenizer_checkpoint": None, "random_init": True,
                  "options": {}},
        "accel": {"name": "none", "options": {}},
        "data": {"classes": [1, 2], "per_class": 3, "num_classes": None, "conditions_file": None},
        "output": {"uri": "/tmp/x", "shard_size": 2, "png_compress_level": 1},
    }
    c = OmegaConf.create(base)
    for k, v in over.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


# ---------------------------------------------------------------------------------------------
# prompt files
# ---------------------------------------------------------------------------------------------
def test_prompt_files_in_three_formats(tmp_path):
    one_line = [p.replace("\n", " ") for p in PROMPTS]
    (tmp_path / "p.txt").write_text("\n".join(one_line[:2]) + "\n\n  \n" + "\n".join(one_line[2:]) + "\n",
                                    encoding="utf-8")
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) if i % 2 else json.dumps({"prompt": x, "id": i})
                                                for i, x in enumerate(PROMPTS)) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"prompt": PROMPTS, "other": list(range(5))}), tmp_path / "p.parquet")
    assert read_conditions_file(tmp_path / "p.txt", prompts=True) == one_line  # blank lines skipped
    for name in ("p.jsonl", "p.parquet"):
        assert read_conditions_file(tmp_path / name, prompts=True) == PROMPTS, name
    plan = build_plan(cfg(**{"data.conditions_file": str(tmp_path / "p.parquet")}), None, takes_prompts=True)
    assert plan.conditions == tuple(PROMPTS) and plan.num_shards == 3
    assert plan.shard(1).conditions == tuple(PROMPTS[2:4])
    assert plan.conditions[1] == "1984"  # a number is a prompt for a text model
    assert build_plan(cfg(**{"data.conditions_file": str(tmp_path / "p.jsonl")}), None, True).hash == plan.hash
    # the UTF-8 byte-order mark some editors write is not part of the first prompt
    (tmp_path / "bom.txt").write_bytes("\ufeffa cat\n".encode("utf-8"))
    assert read_conditions_file(tmp_path / "bom.txt", prompts=True) == ["a cat"]


@pytest.mark.parametrize("name,content,match", [
    ("empty.jsonl", '"a cat"\n""\n', r"empty.jsonl:2: empty prompt"),
    ("blank.jsonl", '{"prompt": "   "}\n', r"blank.jsonl:1: empty prompt"),
    ("num.jsonl", '"a cat"\n5\n', r"num.jsonl:2: 5 is not a prompt"),
    ("field.jsonl", '{"caption": "a cat"}\n', 'without a "prompt" field'),
    ("nothing.txt", "\n \n", "holds no conditions; write one prompt per entry"),
])
def test_bad_prompt_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ArgenError, match=match):
        build_plan(cfg(**{"data.conditions_file": str(tmp_path / name)}), None, takes_prompts=True)


def test_non_utf8_and_parquet_problems(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("a cat\nun caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ArgenError, match=r"latin1.txt:2: byte 0xe9 .* not UTF-8; save the file as UTF-8"):
        read_conditions_file(tmp_path / "latin1.txt", prompts=True)
    with pytest.raises(ArgenError, match=r"latin1.txt:2: byte 0xe9"):  # class files too
        read_conditions_file(tmp_path / "latin1.txt")
    pq.write_table(pa.table({"prompt": ["a cat", None]}), tmp_path / "null.parquet")
    with pytest.raises(ArgenError, match="row 1: None is not a prompt"):
        read_conditions_file(tmp_path / "null.parquet", prompts=True)
    pq.write_table(pa.table({"class": [1, 2], "id": [0, 1]}), tmp_path / "cls.parquet")
    with pytest.raises(ArgenError, match='no column named "prompt"'):
        read_conditions_file(tmp_path / "cls.parquet", prompts=True)
    pq.write_table(pa.table({"class": [1, 2]}), tmp_path / "one.parquet")  # a single column is read ...
    with pytest.raises(ArgenError, match="row 0: 1 is not a prompt"):     # ... and must hold text
        read_conditions_file(tmp_path / "one.parquet", prompts=True)


def test_text_model_needs_a_prompt_file():
    with pytest.raises(ArgenError, match="text-to-image model: pass data.conditions_file"):
        build_plan(cfg(), None, takes_prompts=True)


# ---------------------------------------------------------------------------------------------
# tar members and keys
# ---------------------------------------------------------------------------------------------
def test_prompts_go_into_txt_and_json_never_into_names():
    w = ShardTarWriter()
    image = np.zeros((4, 4, 3), np.uint8)
    keys = [f"000007_{j:06d}" for j in range(len(PROMPTS))]
    for j, (k, p) in enumerate(zip(keys, PROMPTS)):
        w.add(k, image, sample_metadata(k, 70 + j, p, 11, "llamagen_t2i_tiny", "none", {}, 4))
    data = w.finish()
    names = [n for n, _ in iter_tar(data)]
    # exactly the numeric keys and fixed extensions: no part of a prompt (slashes, "..", newlines) in a name
    assert names == [f"{k}.{ext}" for k in keys for ext in ("json", "png", "txt")]
    for s, p in zip(read_shard(data), PROMPTS):
        assert s["txt"] == p and s["json"]["prompt"] == p == s["json"]["condition"] and "cls" not in s


# ---------------------------------------------------------------------------------------------
# CLIP score (a tiny random open_clip model saved as a local folder)
# ---------------------------------------------------------------------------------------------
TINY_CLIP = {"embed_dim": 32, "quick_gelu": True,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("tiny-clip")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP, "preprocess_cfg": {}}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**TINY_CLIP)
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    return d


def test_clip_score_equals_a_direct_open_clip_computation(clip_dir):
    import open_clip
    from PIL import Image

    from pipeline.quality import CLIP_PREFIX, make_clip_scorer

    scorer = make_clip_scorer({"clip_model": str(clip_dir), "batch_size": 2}, "cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    texts = ["a red cat", "a blue car", "a tree"]
    got = scorer(images, texts)
    model, _, pre = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    tok = open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    with torch.no_grad():
        img = model.encode_image(torch.stack([pre(Image.fromarray(x)) for x in images]))
        txt = model.encode_text(tok([CLIP_PREFIX + t for t in texts]))
    ref = torch.nn.functional.cosine_similarity(img, txt).numpy()
    assert np.allclose(got, ref, atol=1e-5) and got.shape == (3,)
    assert scorer.describe()["clip_weights"].startswith("sha256:")
    assert make_clip_scorer({"clip_model": None}, "cpu") is None


def test_clip_folder_errors(tmp_path, clip_dir):
    from pipeline.quality import ClipScorer

    with pytest.raises(ArgenError, match="timm/vit_base_patch32_clip_224.openai"):
        ClipScorer(str(tmp_path), torch.device("cpu"))
    with pytest.raises(ArgenError, match=r"eval.clip_model='s3://b/clip': this is read from a local folder, not a URI"):
        ClipScorer("s3://b/clip", torch.device("cpu"))
    with pytest.raises(ArgenError, match="is not a folder with open_clip_config.json"):  # a file URI, any case
        ClipScorer(f"FILE://{tmp_path}", torch.device("cpu"))
    (tmp_path / "open_clip_config.json").write_text((clip_dir / "open_clip_config.json").read_text())
    with pytest.raises(ArgenError, match="holds no weights file"):  # open_clip alone would use random weights
        ClipScorer(str(tmp_path), torch.device("cpu"))
    sd = torch.load(clip_dir / "open_clip_pytorch_model.bin", weights_only=True)
    del sd["logit_scale"]
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ArgenError, match="logit_scale"):  # strict keys
        ClipScorer(str(tmp_path), torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# the worker, in process: prompt shards with and without a CLIP model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from accel.text_encoder import write_random_t5

    return write_random_t5(tmp_path_factory.mktemp("tiny-t5"))


def prompt_task(shard, texts):
    return ShardTask(shard=shard, start=shard * 10, conditions=tuple(texts),
                     seeds=tuple(sample_seed(0, shard * 10 + i) for i in range(len(texts))))


@pytest.mark.slow
def test_worker_records_clip_score_or_its_absence(tmp_path, t5_dir, clip_dir):
    from pipeline.sinks import LocalSink
    from pipeline.worker import ShardWorker, WorkerSpec

    def worker(sink, eval_cfg):
        return ShardWorker(WorkerSpec(worker="w5", model="llamagen_t2i_tiny", accel="none", device="cpu",
                                      batch_size=2, sink=sink, random_init=True, torch_threads=None,
                                      options={"text_encoder": str(t5_dir), "greedy": True}, eval_cfg=eval_cfg))

    texts = PROMPTS[:3]
    with_clip = worker(LocalSink(tmp_path / "a"), {"clip_model": str(clip_dir), "batch_size": 2})
    assert with_clip.load()["num_classes"] == 0
    rec = with_clip.run_shard(prompt_task(3, texts))
    q = rec["quality"]
    assert q["clip_score_count"] == 3 and -1.0 <= q["clip_score"] <= 1.0 and q["clip_weights"].startswith("sha256:")
    assert "A photo depicts" in q["clip_definition"] and q["class_consistency"] is None
    assert rec["counters"]["prompt_truncated_fraction"] == 0.0 and rec["flops"] > 0
    samples = read_shard(LocalSink(tmp_path / "a").read("shards/000003.tar"))
    assert [s["txt"] for s in samples] == texts and [s["__key__"] for s in samples] == [
        "000003_000000", "000003_000001", "000003_000002"]
    # the recorded score is the scorer's own on the written images
    from pipeline.quality import make_clip_scorer
    from pipeline.shards import decode_png

    images = np.stack([decode_png(s["png"]) for s in samples])
    ref = make_clip_scorer({"clip_model": str(clip_dir), "batch_size": 2}, "cpu")(images, texts)
    assert q["clip_score"] == pytest.approx(float(ref.astype(np.float64).mean()), abs=1e-6)

    without = worker(LocalSink(tmp_path / "b"), {})
    rec = without.run_shard(prompt_task(3, texts))
    assert rec["quality"]["clip_score"] is None and "eval.clip_model is not set" in rec["quality"]["clip_score_absent"]
    # the same shard gives the same bytes whether or not it is scored
    assert LocalSink(tmp_path / "a").read("shards/000003.tar") == LocalSink(tmp_path / "b").read("shards/000003.tar")
    with_clip.close()
    without.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_argen_generate_from_a_prompt_file(ray_cluster, tmp_path, t5_dir, clip_dir):
    """`argen generate` with the tiny t2i model on the shared Ray cluster (plumbing, random weights)."""
    import webdataset as wds

    from jobs.cli import main as argen

    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS[:3]) + "\n")
    out = tmp_path / "out"
    code = argen(["generate", "model=llamagen_t2i_tiny", f"model.text_encoder={t5_dir}", "device=cpu",
                  f"data.conditions_file={tmp_path / 'prompts.jsonl'}", "output.shard_size=2", "batch_size=2",
                  f"eval.clip_model={clip_dir}", "progress=false", "ray.num_workers=1", f"output.uri={out}"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 3 and report["shards"] == 2 and report["complete"] is True
    got = []
    for s in range(2):
        st = json.loads((out / f"shards/{s:06d}.stats.json").read_text())
        assert st["quality"]["clip_score"] is not None and st["quality"]["clip_score_count"] == st["count"]
        got += list(wds.WebDataset(str(out / f"shards/{s:06d}.tar"), shardshuffle=False).decode("rgb8"))
    assert [x["txt"] for x in got] == PROMPTS[:3]
    assert [x["json"]["prompt"] for x in got] == PROMPTS[:3]
    assert all(x["png"].shape == (256, 256, 3) for x in got)
