"""`argen generate` with bad input: each a clear error (exit 2) before any generation.

None of these starts Ray: every check runs before the actor pool exists, so no shard is ever
written (asserted on the output folder).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import main as argen
from pipeline.driver import plain_config

BASE = ["model=var_tiny", "device=cpu", "data.classes=[1,2]", "data.per_class=1", "output.shard_size=1",
        "progress=false"]


def fails(capsys, *overrides: str) -> str:
    with pytest.raises(SystemExit) as e:
        argen(["generate", *BASE, *overrides])
    captured = capsys.readouterr()
    assert e.value.code == 2, captured  # bad input, Hydra's own errors included
    return captured.err + captured.out


def no_shards(out: Path) -> bool:
    return not (out / "shards").exists() or not any((out / "shards").iterdir())


@pytest.mark.parametrize("override,message", [
    ("model.name=var_nope", "unknown model 'var_nope'; known models:"),
    ("accel.name=turbo", "unknown accel 'turbo'; known:"),
    ("accel=turbo", "Could not find 'accel/turbo'"),             # Hydra lists the accel configs
    ("model=nope", "Could not find 'model/nope'"),
    ("output.shard_size=0", "output.shard_size=0; expected an integer >= 1"),
    ("data.classes=[1,1000]", "class id 1000 in data.classes is outside [0, 1000)"),
    ("data.per_class=0", "data.per_class=0; expected an integer >= 1"),
    ("ray.num_workers=0", "ray.num_workers=0; expected an integer >= 1"),
    ("batch_size=-1", "batch_size=-1; expected an integer >= 1"),
    ("output.uri=gs://bucket/x", "has scheme 'gs'"),
    ("accel=lazymar", "accel='lazymar' does not apply to var_tiny (var); choose one of ['none', 'fastvar']"),
    ("+accel.options.cache_scal=8", "unknown option(s) ['cache_scal'] for var_tiny with accel=none"),
    ("device=cuda", "device=cuda but ray.gpus_per_worker=0: Ray hides the GPUs from actors that ask for none"),
    ("output.uri=file://out/run", "output.uri='file://out/run' is not an absolute file URI"),
    # option values and weights, checked by the generator's own check_settings before Ray starts
    ("accel=fastvar +accel.options.cache_scale=7", "cache_scale=7 is not a scale of the schedule"),
    ("+model.options.top_k=many", "top_k='many' is not a number"),
    ("model.random_init=false", "var_tiny: no checkpoint (model.checkpoint=...) and no tokenizer_checkpoint"),
    ("model.name=mar_toy accel.name=lazymar +accel.options.refresh_interval=0", "refresh_interval=0; expected an "
     "integer >= 1"),
    ("model.name=llamagen_toy accel.name=lantern +accel.options.lantern_delta=2", "lantern_delta=2.0 must be a "
     "total-variation bound in [0, 1]"),
    ("model.name=llamagen_t2i_tiny", "no text encoder given (model.text_encoder is null)"),
    # keys added with `+` are checked too: a typo is not a new setting
    ("+data.per_clas=3", "unknown config key(s): data.per_clas (did you mean data.per_class?)"),
    ("+ray.num_worker=2", "unknown config key(s): ray.num_worker (did you mean ray.num_workers?)"),
    ("+output.shardsize=2", "unknown config key(s): output.shardsize (did you mean output.shard_size?)"),
    ("++storage.retry_budget=5", "storage.retry_budget (did you mean storage.retry_budget_s?)"),
    ("storage.retry_budget_s=-1", "storage.retry_budget_s=-1; expected seconds"),
])
def test_bad_settings(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    text = fails(capsys, f"output.uri={out}", *override.split())
    assert message in text
    assert not (out / "run.json").exists()  # refused while checking the config: no Ray, no plan written
    assert no_shards(out)


@pytest.mark.parametrize("name,content,message", [
    ("empty.txt", "", "holds no conditions"),
    ("bad.jsonl", "1\n{oops\n", "bad.jsonl:2: not valid JSON"),
    ("range.txt", "5\n\n1000\n", "range.txt:3: class id 1000 (condition 1) is outside [0, 1000)"),
    ("prompts.txt", "1\na red fox\n", "prompts.txt:2: condition 1 is the prompt 'a red fox', but var_tiny is "
                                      "class-conditional; pass class ids"),
    ("range.jsonl", '7\n{"class": -3}\n', "range.jsonl:2: class id -3 (condition 1) is outside [0, 1000)"),
])
def test_bad_conditions_file(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "out"
    text = fails(capsys, f"output.uri={out}", f"data.conditions_file={path}")
    assert message in text and "argen generate: error:" in text
    assert no_shards(out)


def test_missing_conditions_file(tmp_path, capsys):
    text = fails(capsys, f"output.uri={tmp_path / 'out'}", f"data.conditions_file={tmp_path / 'none.txt'}")
    assert "does not exist" in text


def test_output_holding_another_plan(tmp_path, capsys, caplog):
    """A folder with a different run's committed shards is refused, naming what changed; nothing is touched.
    A run.json whose run committed nothing (it failed on a wrong option) is replaced by the corrected plan."""
    from hydra import compose, initialize_config_dir

    from jobs.common import CONF_DIR
    from pipeline.driver import prepare

    def prepared(*overrides):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return prepare(compose("config", overrides=[*BASE, f"output.uri={out}", *overrides]))

    out = tmp_path / "out"
    def planned_seed():
        return json.loads((out / "run.json").read_text())["plan"]["settings"]["seed"]

    def failed_run(run):  # what the driver leaves when the run's workers fail to load: a report, no shard
        (out / "report.json").write_text(json.dumps({"plan_hash": run.plan.hash, "shards": 0, "finished_at": None}))
        (out / "shards").mkdir(exist_ok=True)
        (out / "shards/000003.features.npy").write_bytes(b"uncommitted, from the old plan")

    first = prepared()
    assert not first.resumed and planned_seed() == 0  # writes run.json for this plan, generates nothing
    record = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**record, "argen": "0.0.1+gdeadbee"}))
    with caplog.at_level("WARNING", logger="argen"):  # (before fails(): Hydra's logging set-up drops caplog's)
        assert prepared().resumed  # another code version: resumed, and said
    assert "was started by argen 0.0.1+gdeadbee and is resumed by argen" in caplog.text
    text = fails(capsys, f"output.uri={out}", "seed=7")  # that run may still be loading its model
    assert "holds another run's plan (changed: seed: 0 in the output, 7 now) with no shard committed yet" in text
    assert "delete " + str(out) + "/run.json and run again" in text and planned_seed() == 0
    failed_run(first)
    second = prepared("seed=7")
    assert not second.resumed and planned_seed() == 7 and no_shards(out)  # replaced, stale files gone
    failed_run(second)
    assert not prepared().resumed and planned_seed() == 0
    before = (out / "run.json").read_bytes()
    (out / "shards").mkdir(exist_ok=True)
    (out / "shards/000000.stats.json").write_text("{}")  # a committed shard
    text = fails(capsys, f"output.uri={out}", "data.per_class=2", "seed=5")
    assert "holds a different run's plan" in text
    assert "data.per_class: 1 in the output, 2 now" in text and "seed: 0 in the output, 5 now" in text
    assert (out / "run.json").read_bytes() == before
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000.stats.json"]
    assert prepared().resumed  # the same settings are accepted (a resume)


def test_shards_without_run_json(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "shards/000000.stats.json").write_text("{}")
    text = fails(capsys, f"output.uri={out}")
    assert "holds shards but no run.json" in text


@pytest.mark.slow
def test_missing_bucket(moto_server, capsys):
    text = fails(capsys, "output.uri=s3://argen-missing-bucket/run", "storage=s3_compatible",
                 f"storage.endpoint_url={moto_server}")
    assert "bucket 'argen-missing-bucket' does not exist" in text


def test_secrets_never_in_run_record():
    cfg = {"storage": {"endpoint_url": "http://user:pw@host:9000", "aws_secret_access_key": "x",
                       "session_token": "y", "region": "r"},
           "model": {"tokenizer_checkpoint": "/ckpt/vae.pth"}, "output": {"uri": "s3://b/p"}}
    clean = plain_config(cfg)
    assert clean["storage"] == {"endpoint_url": "http://host:9000", "region": "r"}
    assert clean["model"] == {"tokenizer_checkpoint": "/ckpt/vae.pth"}
    assert "pw" not in json.dumps(clean)


@pytest.mark.slow
def test_console_script_reports_bad_input(tmp_path):
    """The installed `argen` command: a bad value is one clear line on stderr and exit status 2."""
    argen_bin = Path(sys.executable).parent / "argen"
    r = subprocess.run([str(argen_bin), "generate", *BASE, f"output.uri={tmp_path / 'o'}", "output.shard_size=0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("argen generate: error: output.shard_size=0; expected an integer "
                                                 ">= 1 (samples per shard, e.g. 1000)")
