"""`argen train-toy`: every entry point runs a few steps and writes weights that the generators load by path.

This guards the link between training and sampling (key names, fp16 storage, the latent scale in the
safetensors metadata, the tokenizer a generator expects), not the quality of the committed weights, which
tests/test_toy.py checks.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from accel.api import load_generator
from jobs.train_toy import main as train_toy

FEW = ["train=64", "seed=5"]  # a data set no committed model was trained on, so the disk caches stay apart


def _train(what: str, out, *opts: str) -> dict:
    assert train_toy([what, *FEW, f"out_dir={out}", *opts]) == 0
    return out


def _record(out, name: str) -> dict:
    record = json.loads((out / f"{name}.json").read_text())
    assert record["dataset"] == "ToyShapes" and record["train_seed"] == 5
    assert record["command"].startswith("argen train-toy ")
    return record


def _check_images(gen, n: int = 2) -> None:
    out = gen.generate(list(range(n)), seeds=list(range(n)))
    assert out.images.shape == (n, 32, 32, 3) and out.images.dtype == np.uint8


@pytest.mark.heavy
def test_var_entry_points_write_loadable_weights(tmp_path):
    _train("var-tokenizer", tmp_path, "steps=3", "batch=8")
    _train("var", tmp_path, "steps=2", "batch=4", "threads=1")
    assert _record(tmp_path, "var_toy")["steps"] == 2
    # a continued run starts from those weights and keeps the earlier record
    _train("var", tmp_path, "steps=1", "batch=4", "threads=1", f"init={tmp_path / 'var_toy.safetensors'}")
    record = _record(tmp_path, "var_toy")
    assert record["steps"] == 1 and record["init"]["earlier_record"]["steps"] == 2
    gen = load_generator("var_toy", device="cpu", checkpoint=str(tmp_path / "var_toy.safetensors"),
                         tokenizer_checkpoint=str(tmp_path / "var_vqvae_toy.safetensors"))
    _check_images(gen)


@pytest.mark.heavy
def test_llamagen_entry_points_write_loadable_weights(tmp_path):
    _train("llamagen-tokenizer", tmp_path, "steps=3", "batch=8", "test=16", "threads=1")
    _train("llamagen", tmp_path, "steps=2", "batch=4", "threads=1")
    _train("llamagen-draft", tmp_path, "steps=2", "batch=4", "threads=1")
    for name in ("llamagen_vq_toy", "llamagen_toy", "llamagen_toy_draft"):
        _record(tmp_path, name)
    paths = dict(checkpoint=str(tmp_path / "llamagen_toy.safetensors"),
                 tokenizer_checkpoint=str(tmp_path / "llamagen_vq_toy.safetensors"))
    _check_images(load_generator("llamagen_toy", device="cpu", **paths))
    _check_images(load_generator("llamagen_toy", accel="lantern", device="cpu", **paths,
                                 drafter="llamagen_toy_draft",
                                 drafter_checkpoint=str(tmp_path / "llamagen_toy_draft.safetensors")))


@pytest.mark.heavy
def test_mar_entry_points_write_loadable_weights(tmp_path):
    _train("mar-tokenizer", tmp_path, "steps=3", "batch=8", "threads=1")
    few_head = ["head_steps=2", "head_batch=64", "head_images=4"]
    _train("mar", tmp_path, "steps=2", "batch=4", "threads=1", "held_out=16", *few_head)
    scale = _record(tmp_path, "mar_kl_toy")["latent_scale"]
    assert scale > 0
    check = _record(tmp_path, "mar_toy")["head_check"]  # whether the head is precise enough for the sampler
    assert set(check["eps_mse_at_t"]) == {"999", "990", "900", "500", "100"} and check["chain_token_rms"] > 0
    assert _record(tmp_path, "mar_toy")["head_refinement"]["steps"] == 2
    # steps=0 with init=: only the head of the earlier weights is refined
    _train("mar", tmp_path, "steps=0", "batch=4", "threads=1", "held_out=16", *few_head,
           f"init={tmp_path / 'mar_toy.safetensors'}")
    record = _record(tmp_path, "mar_toy")
    assert record["init"]["earlier_record"]["steps"] == 2 and record["steps"] == 0
    assert record["head_refinement"]["head_check_before"]["eps_mse_at_t"]
    from accel.families.mar import latent_scale_for

    ckpt, tok = str(tmp_path / "mar_toy.safetensors"), str(tmp_path / "mar_kl_toy.safetensors")
    assert latent_scale_for("mar_toy", ckpt, tok, random_init=False) == pytest.approx(scale)
    gen = load_generator("mar_toy", device="cpu", checkpoint=ckpt, tokenizer_checkpoint=tok, num_iter=4,
                         num_sampling_steps="10")
    _check_images(gen)


def test_training_state_resumes_to_the_same_weights_and_ema(tmp_path):
    """TrainingState + EMA + skip_batches: 3 steps, a stop, 3 more give what 6 steps in one go give."""
    import torch

    from training.common import EMA, TrainingState, batches, cosine_schedule, skip_batches

    data = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))

    def sitting(state: TrainingState, steps: int, stop_at: int | None) -> dict:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
        model.register_buffer("mask", torch.full((2,), float("-inf")))  # a buffer the EMA must leave alone
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = cosine_schedule(opt, steps, warmup=2)
        ema = EMA(model, 0.9)
        start = state.restore(model, opt, sched, ema)
        order = batches(len(data), 8, steps, seed=3)
        skip_batches(order, start)
        for step, idx in enumerate(order, start=start):
            loss = model(data[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema.update(model, step)
            state.maybe_save(step + 1, steps, model, opt, sched, ema)
            if step + 1 == stop_at:
                return {}
        return ema.weights(model)

    whole = sitting(TrainingState(str(tmp_path / "a.pt"), every=1), 6, None)
    resumed = TrainingState(str(tmp_path / "b.pt"), every=1)
    assert sitting(resumed, 6, stop_at=3) == {}
    again = sitting(resumed, 6, None)
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    assert torch.isinf(again["mask"]).all() and all(torch.isfinite(v).all() for k, v in again.items() if k != "mask")


@pytest.mark.heavy
def test_a_stopped_run_goes_on_from_its_state_to_the_same_weights(tmp_path):
    """stop_at + state=: a schedule trained in two sittings ends with the weights (EMA included) of one sitting."""
    import shutil

    from accel.checkpoints import read_checkpoint
    from accel.toy import bundled_weights

    one, two = tmp_path / "one", tmp_path / "two"
    for out in (one, two):
        out.mkdir()
        shutil.copy(bundled_weights("var_vqvae_toy"), out)
    common = ["steps=4", "batch=4", "threads=1", "save_every=1", "ema=0.9"]
    _train("var", one, *common, f"state={one / 'state.pt'}", "probe_every=4", "probe_samples=10")
    _train("var", two, *common, f"state={two / 'state.pt'}", "stop_at=2")
    assert not (two / "var_toy.safetensors").exists()
    _train("var", two, *common, f"state={two / 'state.pt'}")
    a, b = read_checkpoint(one / "var_toy.safetensors"), read_checkpoint(two / "var_toy.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert _record(two, "var_toy")["resumed_at_step"] == 2
    probe = _record(one, "var_toy")["probes"][0]
    assert probe["step"] == 4 and probe["samples"] == 10 and 0 <= probe["class_consistency"] <= 1
    assert len(probe["per_class"]) == 10 and probe["data"] == "v2"


def test_stop_at_without_a_state_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="stop_at=2 without state=PATH"):
        train_toy(["var", "stop_at=2", f"out_dir={tmp_path}"])


def test_eagle_drafter_trains_on_the_targets_features_and_loads(tmp_path):
    import shutil

    from accel.families.llamagen import load_model
    from accel.methods.eagle import load_eagle_head
    from accel.toy import bundled_weights

    shutil.copy(bundled_weights("llamagen_vq_toy"), tmp_path)
    _train("llamagen-eagle", tmp_path, "steps=2", "batch=4", "threads=1", "warmup=1")
    record = _record(tmp_path, "llamagen_toy_eagle")
    assert record["target"] == "llamagen_toy.safetensors" and record["data_version"] == "v1"  # the target's
    assert 0 <= record["held_out_top1_agreement"] <= 1
    target = load_model("llamagen_toy", str(bundled_weights("llamagen_toy")), random_init=False,
                        device=torch.device("cpu"))
    head = load_eagle_head(target, tmp_path / "llamagen_toy_eagle.safetensors", torch.device("cpu"))
    assert torch.equal(head.embed_tokens.weight, target.tok_embeddings.weight.half().float())
    with pytest.raises(SystemExit, match="data=v2 but the target"):
        train_toy(["llamagen-eagle", *FEW, f"out_dir={tmp_path}", "data=v2", "steps=1"])


def test_unknown_entry_point_is_a_usage_error(capsys):
    assert train_toy(["nonsense"]) == 2
    assert "usage: argen train-toy" in capsys.readouterr().err


def test_misspelt_or_malformed_options_are_refused_before_training(capsys):
    assert train_toy(["var", "step=10"]) == 2
    assert "unknown option 'step'; known: batch, bf16, data, ema, init, lr, out_dir, probe_every, probe_samples, " \
        "save_every, seed, state, steps, stop_at, threads, train" in capsys.readouterr().err
    assert train_toy(["mar", "steps"]) == 2
    assert "'steps' is not key=value; pass e.g. steps=1500" in capsys.readouterr().err


def test_option_keys_are_the_keys_each_entry_point_reads():
    """OPTION_KEYS (checked before a run starts) lists exactly the opts.get(...) keys of each entry point and
    the helpers it passes opts to."""
    import ast
    import inspect

    import training.classifier
    import training.llamagen
    import training.mar
    import training.var
    from jobs import train_toy as tt

    import training.common

    def keys_of(fn) -> set[str]:
        defs = {}
        for module in (training.common, inspect.getmodule(fn)):  # the shared helpers read options too
            tree = ast.parse(inspect.getsource(module))
            defs.update({n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)})
        found, todo, seen = set(), [fn.__name__], set()
        while todo:
            name = todo.pop()
            seen.add(name)
            for n in ast.walk(defs[name]):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" \
                        and getattr(n.func.value, "id", None) == "opts":
                    found.add(n.args[0].value)
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in defs \
                        and n.func.id not in seen and any(getattr(a, "id", None) == "opts" for a in n.args):
                    todo.append(n.func.id)
        return found

    entry = {"classifier": training.classifier.train_classifier, "var-tokenizer": training.var.train_var_tokenizer,
             "var": training.var.train_var,
             "llamagen-tokenizer": training.llamagen.train_tokenizer, "llamagen": training.llamagen.train_llamagen,
             "llamagen-draft": training.llamagen.train_llamagen_draft,
             "llamagen-eagle": training.llamagen.train_llamagen_eagle,
             "mar-tokenizer": training.mar.train_mar_tokenizer, "mar": training.mar.train_mar}
    assert set(entry) == set(tt.OPTION_KEYS)
    for what, fn in entry.items():
        assert keys_of(fn) == set(tt.OPTION_KEYS[what]), what


def test_generators_need_their_tokenizer_first(tmp_path):
    with pytest.raises(SystemExit, match="run `argen train-toy var-tokenizer` first"):
        train_toy(["var", f"out_dir={tmp_path}", "threads=1"])
    with pytest.raises(SystemExit, match="run `argen train-toy llamagen-tokenizer` first"):
        train_toy(["llamagen", f"out_dir={tmp_path}", "threads=1"])
    with pytest.raises(SystemExit, match="run `argen train-toy mar-tokenizer` first"):
        train_toy(["mar", f"out_dir={tmp_path}", "threads=1"])


def test_head_refinement_sharpens_the_head_near_T():
    """refine_head trains the head alone on cached conditions, weighted towards t >= near_from: its eps error at
    t = 999 (what the sampler's first step multiplies by ~300) falls well below what the same steps with uniform
    timesteps reach, and the transformer stays as it was."""
    import torch

    from accel.api import seeded_init
    from accel.families.mar import build_model, randomize_zero_init
    from training.mar import TrainingDiffusion, cached_conditions, refine_head

    diffusion = TrainingDiffusion()

    def refined(near_share: float) -> tuple[float, float]:
        with seeded_init(0):
            model = build_model("mar_tiny")
            randomize_zero_init(model)
        g = torch.Generator().manual_seed(0)
        mean, std = torch.randn(6, 16, 16, 16, generator=g), torch.full((6, 16, 16, 16), 0.1)
        conditions, targets = cached_conditions(model, mean, std, torch.arange(6), 1.0, 6, g, chunk=3)
        assert len(conditions) == len(targets) >= 6 * 180 and targets.shape[1] == 16  # >= 70% of 256 masked

        def eps_mse_at_999() -> float:
            gc = torch.Generator().manual_seed(1)
            noise = torch.randn(targets.shape, generator=gc)
            x_t = diffusion.sqrt_ac[999] * targets + diffusion.sqrt_1m_ac[999] * noise
            with torch.no_grad():
                out = model.diffloss.net(x_t, torch.full((len(targets),), 999), conditions)
            return float(((out[:, :16] - noise) ** 2).mean())

        transformer = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("diffloss")}
        before = eps_mse_at_999()
        refine_head(model, conditions, targets, diffusion, g, steps=60, batch=512, lr=2e-3, near_share=near_share,
                    log_every=1000)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in transformer.items())
        assert not any(p.requires_grad for p in model.diffloss.parameters())
        return before, eps_mse_at_999()

    before, near = refined(0.5)
    _, uniform = refined(0.0)
    assert near < before / 10 and near < 0.6 * uniform, (before, near, uniform)  # measured 3.2, 0.092, 0.22


def test_help_of_argen_and_its_bench(capsys):
    from jobs import bench, cli

    assert cli.main(["--help"]) == 0
    assert "argen generate                                   # the demo: var_toy" in capsys.readouterr().out
    assert bench.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {suite} " in out for suite in bench.SUITES)
    assert "stand in for the pruned ones, per FastVAR cache scale" in out  # the whole first paragraph
    assert cli.main(["evaluate", "--help"]) == 0  # Hydra's help, then exit status 0
    out = capsys.readouterr().out
    assert out.startswith("`argen evaluate output.uri=... eval.reference=...`: FID")
    assert "== Configuration groups ==" in out
