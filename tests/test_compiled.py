"""The compiled decoding step (accel/compiled.py, issue #23): static KV cache + torch.compile, the same tokens as
eager decoding, compile time reported once; where it does not apply yet, a clear refusal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from accel.api import ArgenError, load_generator
from accel.families import llamagen as lg


def test_the_static_cache_gives_the_eager_logits():
    """What the compiled step runs, eager: every step attends over all slots, masked."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = lg.Transformer(lg.get_config("llamagen_tiny").args)
        model.init_weights(zero_output=False)
    model.eval()
    labels = torch.tensor([3, 7])
    caches = [lg.KVCache(model.config, 2, 40, torch.float32, torch.device("cpu"), static=s) for s in (False, True)]
    outs = []
    for cache in caches:
        with torch.no_grad():
            model(None, labels, torch.arange(1), cache=cache)
            outs.append([model(torch.tensor([[t], [t + 1]]), None, torch.tensor([1 + t]), cache=cache)
                         for t in range(10)])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.heavy  # compiling every shape of a tiny model: 30-40 s of CPU each
@pytest.mark.parametrize("model,options,max_level_diff,flops_keys", [
    # (LlamaGen's FLOPs differ: the static cache attends over every slot, and the count says so)
    ("llamagen_tiny", dict(greedy=True, cfg=2.0), 0, ()),
    # greedy (top_k=1): the same tokens despite the compiled graph's reassociated sums
    ("var_tiny", dict(top_k=1), 0, ("flops", "flops_transformer", "flops_head")),
    # continuous latents: reassociation moves a pixel by at most one level of 255
    ("mar_tiny", dict(num_iter=4, num_sampling_steps="5"), 1,
     ("flops", "flops_encoder", "flops_decoder", "flops_head")),
])
def test_compiled_sampling_gives_the_eager_images_and_flops_and_reports_compiling_once(model, options, max_level_diff,
                                                                                       flops_keys):
    kw = dict(device="cpu", random_init=True, **options)
    eager = load_generator(model, **kw).generate([3, 8], seeds=[0, 1])
    gen = load_generator(model, compile=True, **kw)
    first = gen.generate([3, 8], seeds=[0, 1])
    again = gen.generate([3, 8], seeds=[0, 1])
    for out in (first, again):
        assert np.abs(out.images.astype(int) - eager.images.astype(int)).max() <= max_level_diff
    assert first.stats["compile_seconds"] > 1 and "compile_seconds" not in again.stats
    for key in flops_keys:
        assert again.stats[key] == pytest.approx(eager.stats[key], rel=1e-9), key


def test_var_counts_a_compiled_scale_from_its_shapes_as_the_modules_count_it():
    """A compiled block runs none of the modules' FLOP counts; the loop's count from the shapes must match."""
    from accel import flops as F_
    from accel.families.var.network import call_block

    gen = load_generator("var_tiny", device="cpu", random_init=True)

    def uncounted_block(block, x, cond, cache):  # as a compiled graph: the modules' counts go nowhere
        with F_.counting(F_.FlopCounter()):
            return call_block(block, x, cond, cache)

    totals = []
    for block_call in (None, uncounted_block):
        counter = F_.FlopCounter()
        with torch.no_grad(), F_.counting(counter):
            gen.model.autoregressive_infer_cfg(gen.vae.quantize, torch.tensor([1, 2]),
                                               [torch.Generator().manual_seed(i) for i in range(2)],
                                               block_call=block_call)
        totals.append(dict(counter.by_component))
    assert totals[0]["transformer"] > 0 and totals[1] == pytest.approx(totals[0], rel=1e-12)


def test_mar_counts_a_compiled_call_from_its_shapes_as_the_modules_count_it():
    """A compiled block or head runs none of the modules' FLOP counts; the counts from the shapes must match."""
    from accel import flops as F_
    from accel.families.mar.diffloss import call_head
    from accel.families.mar.network import call_block

    gen = load_generator("mar_tiny", device="cpu", random_init=True)

    def uncounted(fn):  # as a compiled graph: the modules' counts go nowhere
        def call(*args):
            with F_.counting(F_.FlopCounter()):
                return fn(*args)
        return call

    totals = []
    for calls in ((None, None), (uncounted(call_block), uncounted(call_head))):
        counter = F_.FlopCounter()
        with torch.no_grad(), F_.counting(counter):
            gen.model.sample_tokens(torch.tensor([1, 2]), [torch.Generator().manual_seed(i) for i in range(2)],
                                    num_iter=4, cfg=3.0, num_sampling_steps="5", block_call=calls[0],
                                    head_call=calls[1])
        totals.append(dict(counter.by_component))
    assert totals[0]["head"] > 0 and totals[1] == pytest.approx(totals[0], rel=1e-12)


@pytest.mark.parametrize("model,accel,compile,match", [
    ("llamagen_tiny", "lantern", True, "the compiled step covers the release's sampling loop"),
    ("var_tiny", "fastvar", True, "the compiled step covers the release's sampling loop"),
    ("mar_tiny", "lazymar", True, "the compiled step covers the release's sampling loop"),
    ("llamagen_tiny", "none", "maybe", "compile='maybe'; expected auto"),
])
def test_where_compiling_does_not_apply_it_is_refused(model, accel, compile, match):
    with pytest.raises(ArgenError, match=match):
        load_generator(model, accel=accel, device="cpu", random_init=True, compile=compile)


def test_auto_compiles_on_cuda_only():
    gen = load_generator("llamagen_tiny", accel="lantern", device="cpu", random_init=True, compile="auto")
    assert gen.compiled is None


def test_argen_generate_checks_compile_before_ray(tmp_path, capsys):
    from jobs.cli import main as argen

    for model, value, message in (("var_tiny", "maybe", "compile='maybe'; expected auto"),
                                  ("llamagen_tiny", "sometimes", "compile='sometimes'; expected auto")):
        with pytest.raises(SystemExit) as e:
            argen(["generate", f"model={model}", "model.random_init=true", f"compile={value}",
                   f"output.uri={tmp_path / 'out'}"])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.heavy  # a Ray run plus ~20 s of compiling in the worker
def test_a_compiled_run_records_its_compile_time_once_per_worker(ray_cluster, tmp_path):
    import json

    from jobs.cli import main as argen

    out = tmp_path / "out"
    assert argen(["generate", "model=llamagen_tiny", "model.random_init=true", "device=cpu", "compile=true",
                  "data.classes=[1,2]", "data.per_class=2", "output.shard_size=2", "batch_size=2", "progress=false",
                  f"output.uri={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [w["compile_seconds"] > 1 for w in report["workers"]] == [True]
    stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.stats.json"))]
    assert len(stats) == 2 and all(s["images_per_second"] > 0 for s in stats)


def test_weight_first_linears_give_the_same_values():
    import torch.nn.functional as F

    from accel.compiled import WEIGHT_FIRST_ROWS, WeightFirstLinear

    weight, bias = torch.randn(48, 32), torch.randn(48)
    for rows in (1, 3, WEIGHT_FIRST_ROWS):  # per-row products, then W @ x^T
        x = torch.randn(rows, 1, 32)
        with WeightFirstLinear():
            got, plain = F.linear(x, weight, bias), F.linear(x, weight)
        torch.testing.assert_close(got, F.linear(x, weight, bias))
        torch.testing.assert_close(plain, x @ weight.T)
        assert got.shape == (rows, 1, 48)
    many = torch.randn(WEIGHT_FIRST_ROWS + 1, 32)
    with WeightFirstLinear():  # more rows than WEIGHT_FIRST_ROWS: gemm as before, the same bits
        passed_through = F.linear(many, weight)
    assert torch.equal(passed_through, F.linear(many, weight))


@pytest.mark.heavy  # ~90 s: compiles every tiny model's step
def test_the_prepared_gpu_check_runs_dry_on_the_cpu(capsys):
    """`argen bench gpu` waits for a lent GPU; its dry run on the tiny models proves the script itself works
    (every family, every variant, the table), so device time is not lost to a broken script."""
    from jobs.benches import gpu

    gpu.run({"device": "cpu", "models": "llamagen_tiny,var_tiny,mar_tiny", "batches": "1", "images": "1",
             "mar_steps": "2"})
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "tiny" in line]
    assert [row.split(" | ")[2] for row in rows] == ["fp32 eager", "release eager", "release compiled"] * 3
    assert all(float(row.split(" | ")[4]) > 0 for row in rows)
    if not torch.cuda.is_available():  # its default device: refused with a pointer to the CPU suites
        with pytest.raises(SystemExit, match="no CUDA device here"):
            gpu.run({})
