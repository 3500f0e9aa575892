"""`argen train-toy classifier`: the toy classifier behind toy FID features and class-consistency."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import WEIGHTS_DIR, as_float, data_version, toy_images, write_weights


def train_classifier(opts: dict[str, str]) -> None:
    from accel.toy.classifier import ToyClassifier

    seed, n_train, n_test = int(opts.get("seed", 0)), int(opts.get("train", 30000)), int(opts.get("test", 5000))
    epochs, batch, lr = int(opts.get("epochs", 3)), int(opts.get("batch", 128)), float(opts.get("lr", 2e-3))
    torch.manual_seed(seed)
    version = data_version(opts)
    xs, ys = toy_images(seed, n_train, version)
    xt, yt = toy_images(seed + 1, n_test, version)
    model = ToyClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (n_train // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    x_all, y_all = as_float(xs), torch.from_numpy(ys).long()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n_train)
        for i in range(n_train // batch):
            idx = perm[i * batch:(i + 1) * batch]
            x = x_all[idx]
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x, x.flip(-1))  # the classes are mirror-symmetric
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = evaluate_classifier(model, xt, yt)
        print(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} held-out accuracy {acc:.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    record = {"what": "toy classifier", "dataset": "ToyShapes", "data_version": version, "train_seed": seed,
              "train_samples": n_train,
              "test_seed": seed + 1, "test_samples": n_test, "epochs": epochs, "batch": batch, "lr": lr,
              "held_out_accuracy": acc, "train_seconds": round(time.time() - t0, 1),
              "command": "argen train-toy classifier " + " ".join(f"{k}={v}" for k, v in opts.items())}
    path = write_weights(model.eval(), "toy_classifier", record, Path(opts.get("out_dir", WEIGHTS_DIR)))
    print(f"wrote {path} (held-out accuracy {acc:.4f})")


@torch.no_grad()
def evaluate_classifier(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), 500):
        correct += (model(as_float(images[i:i + 500])).argmax(1).numpy() == labels[i:i + 500]).sum()
    return float(correct) / len(images)
