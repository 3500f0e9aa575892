"""The plan: a pure function of the config; class-balanced, interleaved; seeds hash(run seed, i)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from accel.api import ArgenError
from pipeline.layout import sample_key
from pipeline.plan import build_plan, diff_settings, read_conditions_file, sample_seed


def cfg(**over):
    base = {
        "seed": 0, "batch_size": 4, "device": "cpu",
        "model": {"name": "var_tiny", "checkpoint": None, "tokenizer_checkpoint": None, "random_init": True,
                  "options": {}},
        "accel": {"name": "none", "options": {}},
        "data": {"classes": None, "per_class": 3, "num_classes": None, "conditions_file": None},
        "output": {"uri": "/tmp/x", "shard_size": 4, "png_compress_level": 1},
    }
    c = OmegaConf.create(base)
    for k, v in over.items():
        OmegaConf.update(c, k, v, merge=False)
    return c


def test_balanced_interleaved_and_sharded():
    plan = build_plan(cfg(**{"data.classes": [7, 3, 5], "data.per_class": 3}), num_classes=10)
    assert plan.conditions == (7, 3, 5) * 3
    assert plan.num_samples == 9 and plan.num_shards == 3
    shards = plan.shards()
    assert [s.start for s in shards] == [0, 4, 8]
    assert [s.count for s in shards] == [4, 4, 1]
    assert shards[0].conditions == (7, 3, 5, 7)
    # every shard but the short last one mixes classes
    assert all(len(set(s.conditions)) > 1 for s in shards[:-1])
    # sample i's seed is hash(run seed, i), whatever shard it is in
    assert shards[1].seeds == tuple(sample_seed(0, i) for i in range(4, 8))
    assert shards[2].keys() == ["000002_000000"]
    # per-class counts are exact
    assert all(plan.conditions.count(c) == 3 for c in (7, 3, 5))


def test_all_classes_when_null():
    plan = build_plan(cfg(**{"data.per_class": 2}), num_classes=5)
    assert plan.conditions == (0, 1, 2, 3, 4, 0, 1, 2, 3, 4)
    plan = build_plan(cfg(**{"data.per_class": 1, "data.num_classes": 3}), num_classes=5)
    assert plan.conditions == (0, 1, 2)


def test_pure_function_of_config():
    a = build_plan(cfg(), num_classes=10)
    b = build_plan(cfg(), num_classes=10)
    assert a == b and a.hash == b.hash
    c = build_plan(cfg(seed=1), num_classes=10)
    assert c.hash != a.hash and c.shard(0).seeds != a.shard(0).seeds
    assert c.conditions == a.conditions


def test_seeds_distinct_and_stable():
    seeds = [sample_seed(0, i) for i in range(10000)]
    assert len(set(seeds)) == 10000
    assert all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5)
    # a fixed value: the seed derivation is a contract of resumed runs
    assert sample_seed(0, 0) == int.from_bytes(
        __import__("hashlib").sha256(b"argen-sample-seed:0:0").digest()[:8], "big") & (2**63 - 1)


def test_shard_key_format():
    assert sample_key(12, 3) == "000012_000003"


def test_diff_names_the_setting():
    a = build_plan(cfg(), num_classes=10)
    b = build_plan(cfg(**{"data.per_class": 5, "output.shard_size": 8}), num_classes=10)
    lines = diff_settings(a.settings, b.settings)
    text = "\n".join(lines)
    assert "data.per_class: 3 in the output, 5 now" in text
    assert "output.shard_size: 4 in the output, 8 now" in text
    assert diff_settings(a.settings, a.settings) == []


@pytest.mark.parametrize("key,value,match", [
    ("output.shard_size", 0, "output.shard_size=0"),
    ("output.shard_size", -3, "output.shard_size=-3"),
    ("batch_size", 0, "batch_size=0"),
    ("data.per_class", 0, "data.per_class=0"),
    ("data.classes", [1, 99], "class id 99"),
    ("data.classes", [1, 1], "repeats class ids"),
    ("data.classes", [], "non-empty list"),
    ("data.num_classes", 50, "data.num_classes=50"),
    ("seed", -1, "seed=-1"),
    ("output.shard_size", 1_000_001, r"output.shard_size=1000001 make 1 shards; .* 6 digits"),
])
def test_bad_settings(key, value, match):
    with pytest.raises(ArgenError, match=match):
        build_plan(cfg(**{key: value}), num_classes=10)


def test_more_shards_than_six_digits_name_is_refused():
    with pytest.raises(ArgenError, match=r"100000100 samples in shards of output.shard_size=100 make 1000001 shards; "
                                         r".* use a shard size between 101 and 1,000,000"):
        build_plan(cfg(**{"data.classes": [1], "data.per_class": 100_000_100, "output.shard_size": 100}),
                   num_classes=10)


def test_conditions_files(tmp_path):
    (tmp_path / "a.txt").write_text("3\n\n 5 \n1\n")
    (tmp_path / "b.jsonl").write_text('3\n{"class": 5}\n{"condition": 1}\n')
    pq.write_table(pa.table({"class": [3, 5, 1]}), tmp_path / "c.parquet")
    for name in ("a.txt", "b.jsonl", "c.parquet"):
        assert read_conditions_file(tmp_path / name) == [3, 5, 1], name
        plan = build_plan(cfg(**{"data.conditions_file": str(tmp_path / name)}), num_classes=10)
        assert plan.conditions == (3, 5, 1)
    # the plan depends on the contents, not the path
    a = build_plan(cfg(**{"data.conditions_file": str(tmp_path / "a.txt")}), num_classes=10)
    c = build_plan(cfg(**{"data.conditions_file": str(tmp_path / "c.parquet")}), num_classes=10)
    assert a.hash == c.hash
    (tmp_path / "p.txt").write_text("a photo of a cat\n")
    assert read_conditions_file(tmp_path / "p.txt") == ["a photo of a cat"]


@pytest.mark.parametrize("name,content,match", [
    ("empty.txt", "", "holds no conditions"),
    ("blank.txt", "\n  \n", "holds no conditions"),
    ("bad.jsonl", '3\n{"class": 5\n', r"bad.jsonl:2: not valid JSON"),
    ("obj.jsonl", '{"label": 5}\n', "without a \"condition\""),
    ("bool.jsonl", 'true\n', "neither a class id"),
    ("x.csv", "1\n", "expected .txt, .jsonl or .parquet"),
    ("range.txt", "1\n10\n", "class id 10"),
    ("prompt.txt", "1\na cat\n", "is class-conditional"),
])
def test_bad_conditions_files(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ArgenError, match=match):
        build_plan(cfg(**{"data.conditions_file": str(tmp_path / name)}), num_classes=10)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ArgenError, match="does not exist"):
        read_conditions_file(tmp_path / "nope.txt")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArgenError, match="cannot be read as parquet"):
        read_conditions_file(tmp_path / "broken.parquet")
    pq.write_table(pa.table({"a": [1], "b": [2]}), tmp_path / "two.parquet")
    with pytest.raises(ArgenError, match="no column named"):
        read_conditions_file(tmp_path / "two.parquet")


def test_settings_are_json():
    plan = build_plan(cfg(**{"model.options": {"cfg": 1.5}}), num_classes=10)
    json.dumps(plan.settings)
    assert plan.settings["model.options"] == {"cfg": 1.5}


def test_every_class_conditional_model_knows_its_classes():
    """data.classes=null (the FID-50k plan) needs the model's class count from its config, whose key follows
    upstream (VAR num_classes, MAR class_num, LlamaGen ModelArgs.num_classes); it must match the generator."""
    import importlib

    from accel.api import load_generator
    from accel.models import conditions_of

    for family in ("var", "llamagen", "mar"):
        for name in importlib.import_module(f"accel.families.{family}").CONFIGS:
            n, takes_prompts = conditions_of(name)
            assert (n is None) == takes_prompts, (name, n, takes_prompts)
            if not takes_prompts:
                assert n == (10 if name.endswith(("_toy", "_toy_draft")) else 1000), (name, n)
    for name in ("var_toy", "llamagen_toy", "mar_toy"):
        assert load_generator(name, device="cpu").num_classes == conditions_of(name)[0] == 10
    plan = build_plan(cfg(**{"model.name": "mar_base", "data.per_class": 50}), *conditions_of("mar_base"))
    assert plan.num_samples == 50_000 and set(plan.conditions) == set(range(1000))


@pytest.mark.parametrize("value, expected", [(3, 3), ("3", 3), (3.0, 3), ("4.0", 4), (2**62, 2**62)])
def test_option_int_takes_whole_numbers_from_configs_and_command_lines(value, expected):
    from accel.api import option_int

    assert option_int("gamma", value, 1) == expected and isinstance(option_int("gamma", value, 1), int)


@pytest.mark.parametrize("value, low, high, match", [
    (0, 1, None, r"gamma=0; expected an integer >= 1 \(draft tokens\)"),
    (1.5, 1, None, r"gamma=1.5; expected an integer >= 1"),
    (True, 0, None, r"gamma=True; expected an integer >= 0"),
    ("x", 1, None, r"gamma='x'; expected an integer >= 1"),
    ([2], 1, None, r"gamma=\[2\]; expected an integer >= 1"),
    (float("nan"), 1, None, r"gamma=nan; expected an integer >= 1"),
    (6, 0, 5, r"gamma=6; expected an integer from 0 to 5"),
])
def test_option_int_names_the_value_and_the_range(value, low, high, match):
    from accel.api import option_int

    with pytest.raises(ArgenError, match=match):
        option_int("gamma", value, low, high, hint="draft tokens")


def test_option_number_and_flag():
    from accel.api import option_flag, option_number

    assert option_number("cfg", "1.5", float, "1.5") == 1.5 and option_number("top_k", 900.0, int, "900") == 900
    with pytest.raises(ArgenError, match=r"top_k=900.5 is not a whole number; pass e.g. top_k=900"):
        option_number("top_k", 900.5, int, "900")
    with pytest.raises(ArgenError, match=r"cfg='high' is not a number; pass e.g. cfg=1.5"):
        option_number("cfg", "high", float, "1.5")
    assert option_flag("greedy", "TRUE") is True and option_flag("greedy", False) is False
    with pytest.raises(ArgenError, match=r"greedy=1 is not true or false"):
        option_flag("greedy", 1)
