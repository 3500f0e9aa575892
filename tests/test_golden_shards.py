"""The same config writes the same bytes: shard tars of the trained toys against sha256s recorded before the
redesign of accel/ (families, methods, registry) and of the output keys (pipeline/layout.py); and the same
generation counts the same analytic FLOPs.

Each case is one shard of `argen generate` as a worker writes it (the config composed by Hydra, the worker
spec and the plan built by the driver's own functions), run in this process: Ray adds nothing to the bytes.
A changed digest means generation changed; if that is intended, say why in the commit and record the new one
(`python -m tests.test_golden_shards` prints them).
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

CONF_DIR = str(Path(__file__).resolve().parent.parent / "jobs" / "conf")

# 3 samples of classes 1, 4, 7 in one shard, batch 2 (a full and a partial batch); cheap settings for MAR
CASES = {
    "var_toy-none": ["model=var_toy", "accel=none"],
    "var_toy-fastvar": ["model=var_toy", "accel=fastvar", "+accel.options.cache_scale=8"],
    "llamagen_toy-none": ["model=llamagen_toy", "accel=none"],
    "llamagen_toy-lantern": ["model=llamagen_toy", "accel=lantern"],
    "llamagen_toy-sjd": ["model=llamagen_toy", "accel=sjd"],
    "mar_toy-none": ["model=mar_toy", "accel=none", "+model.options.num_iter=8",
                     "+model.options.num_sampling_steps=10"],
    "mar_toy-lazymar": ["model=mar_toy", "accel=lazymar", "+model.options.num_iter=8",
                        "+model.options.num_sampling_steps=10", "+accel.options.warmup_steps=2",
                        "+accel.options.refresh_interval=3", "+accel.options.head_refresh_interval=3"],
}
COMMON = ["device=cpu", "data.classes=[1,4,7]", "data.per_class=1", "output.shard_size=3", "batch_size=2",
          "progress=false", "seed=3"]

RECORDED = {  # recorded on the code before the redesign (commit 6137414)
    "llamagen_toy-lantern": "af932cce429b939bb9fa2837c67c6f2fe1a5896bd8adf7b77538f864a3a212a4",
    "llamagen_toy-none": "3a963a9358d4b4d1b8ba0463f7a4b00ad51a0477e72ecd40e25c79ecc3e942c9",
    "llamagen_toy-sjd": "395139ad850aef39127b0f148f49cc7680559e7a1b34cd5dc1858273e81e48bf",
    "mar_toy-lazymar": "7c083fda30c145aa9c54d440bcff60dbefb44612f57a4ccdea9eff7002d39bec",
    "mar_toy-none": "41956bbc8a7b1333629aedb5e42ad5e8f0bb33e2716100168aedb2ad467a89b9",
    "var_toy-fastvar": "1da05dc102690e6305bbcc4c8b593c41fa4b48b32061aca008166602b83b76da",
    "var_toy-none": "cdfc152e188f177f3c6859138787825a9fca95b98bb4cf4e57e139c9d1dc632c",
}

# the analytic FLOPs per image (GenerationOutput.stats flops*) of two samples (classes 1, 2; seeds 0, 1), recorded
# on 77c4690, before the counting moved from a counter passed through the forwards to accel.flops.counting
FLOPS_CASES = {
    "var_tiny-none": ("var_tiny", "none", {}),
    "var_tiny-fastvar": ("var_tiny", "fastvar", {}),
    "llamagen_tiny-none": ("llamagen_tiny", "none", {}),
    "llamagen_tiny-lantern": ("llamagen_tiny", "lantern", {}),
    "llamagen_tiny-sjd": ("llamagen_tiny", "sjd", {}),
    "llamagen_toy-speculative": ("llamagen_toy", "speculative", {'drafter': 'llamagen_toy_draft'}),
    "mar_tiny-lazymar": ("mar_tiny", "lazymar", {'num_iter': 4, 'num_sampling_steps': '5'}),
}
RECORDED_FLOPS = {
    "var_tiny-none": {"flops": 20715659264.0, "flops_head": 1426063360.0, "flops_tokenizer": 15966142464.0, "flops_transformer": 3323453440.0},
    "var_tiny-fastvar": {"flops": 19065184256.0, "flops_head": 1426063360.0, "flops_tokenizer": 15966142464.0, "flops_transformer": 1672978432.0},
    "llamagen_tiny-none": {"flops": 12278038528.0, "flops_target": 1216479232.0, "flops_tokenizer": 11061559296.0},
    "llamagen_tiny-lantern": {"flops": 12872645376.0, "flops_drafter": 569892608.0, "flops_target": 1241193472.0, "flops_tokenizer": 11061559296.0},
    "llamagen_tiny-sjd": {"flops": 27294630912.0, "flops_target": 16233071616.0, "flops_tokenizer": 11061559296.0},
    "llamagen_toy-speculative": {"flops": 3707338752.0, "flops_drafter": 531595264.0, "flops_target": 2763849728.0, "flops_tokenizer": 411893760.0},
    "mar_tiny-lazymar": {"flops": 19232106496.0, "flops_decoder": 2768240640.0, "flops_embed": 12550144.0, "flops_encoder": 282667008.0, "flops_head": 417857536.0, "flops_tokenizer": 15750791168.0},
}


def shard_tar(overrides: list[str], out: Path) -> bytes:
    """Shard 0 of the run these overrides describe, written by a ShardWorker exactly as in `argen generate`."""
    from hydra import compose, initialize_config_dir

    from pipeline.driver import prepare, worker_spec
    from pipeline.layout import tar_key
    from pipeline.worker import ShardWorker

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*COMMON, *overrides, f"output.uri={out}"])
    run = prepare(cfg)  # the driver's checks, plan and run.json
    sink = run.sink
    worker = ShardWorker(worker_spec(cfg, sink, 0, warmup_condition=run.plan.conditions[0]))
    try:
        worker.load()
        worker.run_shard(run.plan.shard(0), attempt=1)
    finally:
        worker.close()
    return sink.read(tar_key(0))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_shard_bytes_are_as_recorded(case, tmp_path):
    digest = hashlib.sha256(shard_tar(CASES[case], tmp_path / case)).hexdigest()
    assert digest == RECORDED[case], f"{case}: shard bytes changed (sha256 {digest})"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(FLOPS_CASES))
def test_flops_are_as_recorded(case):
    from accel.api import load_generator

    name, accel, options = FLOPS_CASES[case]
    gen = load_generator(name, accel=accel, device="cpu", random_init=not name.endswith("toy"), **options)
    stats = gen.generate([1, 2], seeds=[0, 1]).stats
    assert {k: v for k, v in stats.items() if k.startswith("flops")} == RECORDED_FLOPS[case]


if __name__ == "__main__":  # print the digests of the code as it is, to record them
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for case in sorted(CASES):
            print(f'    "{case}": "{hashlib.sha256(shard_tar(CASES[case], Path(tmp) / case)).hexdigest()}",',
                  flush=True)
    sys.exit(0)
