"""`argen bench gpu`: the prepared GPU check (issue #23): fp32 eager vs the release's precision, eager and
compiled (CUDA graphs), on one CUDA device.

For each model and batch size, one run: seconds per image of whole images (tokens and decoding), the
speed-up against fp32 eager measured in the same run, GFLOP/s (argen's analytic FLOPs) and the fraction of the
roofline, max(FLOPs / matmul peak, weight bytes read / bandwidth), with the peak (in the
row's precision) and the bandwidth measured at the start; the compile seconds of the compiled rows; the
card's name and memory. Seeded random weights of the released sizes: the speed mechanics, not quality.
Refuses to run without CUDA (CPU figures: argen bench decode / var / mar); `device=cpu` is a dry run of the
script itself (the tests run it on the tiny models).

Options: models=llamagen_b,var_d16,mar_base  batches=1,16  images=16 (per batch size and row; at least the batch)
         mar_steps=16 (MAR steps, 25 DDPM steps, as the issue's bar)  device=cuda
"""
from __future__ import annotations

import torch

from jobs.benches.decode import measured_peaks, weight_bytes_per_batch

VARIANTS = (("fp32 eager", {"precision": "fp32"}), ("release eager", {"precision": "auto"}),
            ("release compiled", {"precision": "auto", "compile": True}))


def run(overrides: dict[str, str]) -> None:
    from accel.api import load_generator
    from accel.generator import PRECISIONS

    models = overrides.pop("models", "llamagen_b,var_d16,mar_base").split(",")
    batches = [int(b) for b in overrides.pop("batches", "1,16").split(",")]
    images = int(overrides.pop("images", "16"))
    mar_steps = int(overrides.pop("mar_steps", "16"))
    device = torch.device(overrides.pop("device", "cuda"))
    if overrides:
        raise SystemExit(f"argen bench gpu: unknown option(s) {sorted(overrides)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("argen bench gpu: no CUDA device here; this suite measures a GPU (on a CPU: argen bench "
                         "decode, var, mar; device=cpu runs this script dry)")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as VAR's demo
    else:
        card = "cpu (dry run)"
    dtypes = (torch.float32, torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    peaks = {dtype: measured_peaks(device=device, dtype=dtype) for dtype in dtypes}
    peaks.update({dtype: peaks[torch.float32] for dtype in (torch.bfloat16, torch.float16) if dtype not in peaks})
    bandwidth = peaks[torch.float32][1]
    print(f"device: {card}; torch {torch.__version__}; matmul peak "
          f"fp32 (TF32) {peaks[torch.float32][0] / 1e12:.1f}, bf16 {peaks[torch.bfloat16][0] / 1e12:.1f}, fp16 "
          f"{peaks[torch.float16][0] / 1e12:.1f} TFLOP/s; memory read {bandwidth / 1e9:.0f} GB/s\n")
    print("| model | batch | variant | precision | s/img | speed-up vs fp32 eager | GFLOP/s | of roofline "
          "| compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models:
        options = {"num_iter": mar_steps, "num_sampling_steps": "25"} if name.startswith("mar") else {}
        gens = {label: load_generator(name, device=device, random_init=True, **kw, **options)
                for label, kw in VARIANTS}
        for B in batches:
            conds, calls = [i % 10 for i in range(B)], max(1, images // B)
            for gen in gens.values():  # warm-up: allocations, cuDNN choices, and the compiled rows' compiling
                gen.generate(conds, seeds=list(range(B)))
            seconds, flops = {k: 0.0 for k in gens}, {}
            for c in range(calls):
                for label, gen in gens.items():  # interleaved call by call
                    out = gen.generate(conds, seeds=[c * B + i for i in range(B)])
                    seconds[label] += out.stats["seconds"]
                    flops[label] = out.stats["flops"]
            n = calls * B
            for label, gen in gens.items():
                roof = max(flops[label] / peaks[PRECISIONS[gen.precision]][0],
                           weight_bytes_per_batch(gen) / B / bandwidth)
                compiled = sum(p.compile_seconds for p in gen.compiled_parts) if gen.compiled_parts else None
                rate = flops[label] * n / seconds[label]
                print(f"| {name} | {B} | {label} | {gen.precision} | {seconds[label] / n:.4f} "
                      f"| {seconds['fp32 eager'] / seconds[label]:.2f}x | {rate / 1e9:.0f} "
                      f"| {roof * n / seconds[label]:.0%} "
                      f"| {f'{compiled:.0f}' if compiled is not None else '-'} |", flush=True)
        del gens
        if device.type == "cuda":
            torch.cuda.empty_cache()
