"""`argen bench toys_sheet`: the three trained toys' samples, one labelled row per class, in one PNG (docs/toys.png).

What a person checks: can every class be named from its row? Each toy draws `per_class` samples of every
class at its default sampling settings (seeds 0, 1, ...), and its class-consistency on those samples (the
toy classifier's agreement with the asked class) is printed and written above its panel.

Options: out=docs/toys.png  per_class=8  models=var_toy,llamagen_toy,mar_toy
         <model>=<weights file> and <model>.tokenizer=<file> to draw other weights than the committed ones
         (a training run's probe: var_toy=runs/var_toy.probe.safetensors var_toy.tokenizer=runs/var_vqvae_toy...)
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def run(overrides: dict[str, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from accel.api import load_generator
    from accel.toy.data import CLASSES
    from pipeline.quality import make_extractor

    out = Path(overrides.pop("out", "docs/toys.png"))
    per_class = int(overrides.pop("per_class", "8"))
    models = overrides.pop("models", "var_toy,llamagen_toy,mar_toy").split(",")
    weights = {m: overrides.pop(m) for m in models if m in overrides}
    tokenizers = {m: overrides.pop(f"{m}.tokenizer") for m in models if f"{m}.tokenizer" in overrides}
    if overrides:
        raise SystemExit(f"argen bench toys_sheet: unknown option(s) {sorted(overrides)}")
    classifier = make_extractor("toy", None, "cpu")
    fig, axes = plt.subplots(1, len(models), figsize=(len(models) * (1.4 + 2.4 * per_class / 8), 4.4), squeeze=False)
    for ax, name in zip(axes[0], models):
        gen = load_generator(name, device="cpu", checkpoint=weights.get(name),
                             tokenizer_checkpoint=tokenizers.get(name))
        conditions = [c for c in range(len(CLASSES)) for _ in range(per_class)]
        images = gen.generate(conditions, seeds=list(range(len(conditions)))).images  # [N, H, W, 3]
        _, logits = classifier(images)
        agree = logits.argmax(1) == np.asarray(conditions)
        per = agree.reshape(len(CLASSES), per_class).mean(1)
        h, w = images.shape[1:3]
        grid = images.reshape(len(CLASSES), per_class, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(
            len(CLASSES) * h, per_class * w, 3)
        ax.imshow(grid, interpolation="nearest")
        ax.set_yticks([(i + 0.5) * h for i in range(len(CLASSES))],
                      [f"{c} {p:.2f}" for c, p in zip(CLASSES, per)], fontsize=7)
        ax.set_xticks([])
        source = Path(weights[name]).name if name in weights else "committed"
        ax.set_title(f"{name} ({source})\nclass-consistency {agree.mean():.2f}", fontsize=8)
        print(f"{name} ({source}): class-consistency {agree.mean():.3f} on {agree.size} samples; per class "
              + ", ".join(f"{c} {p:.2f}" for c, p in zip(CLASSES, per)), flush=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    plt.close(fig)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    print(f"wrote {out}")
