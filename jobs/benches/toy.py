"""Toy quality: FID and class-consistency of a toy generator against ToyShapes, with the toy classifier.

`toy_quality(gen, n)` generates n class-balanced samples (class i mod 10, seed i + seed_offset),
extracts the toy classifier's 256-d penultimate features, and compares their statistics with those of
REFERENCE_SAMPLES real ToyShapes images (data-set seed REFERENCE_SEED, never used in training). The
reference statistics are cached on disk, keyed by the classifier's weights.

`argen bench toy` (run()) prints the quality-vs-speed table: for each acceleration and a few settings,
toy FID, class-consistency, wall-clock ratio and FLOPs ratio against its baseline, in one run with the
same seeds.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np
import torch

from accel.checkpoints import CACHE_DIR, load_strict, read_checkpoint
from pipeline.metrics import FeatureStats, fid_from_stats

REFERENCE_SEED = 2
REFERENCE_SAMPLES = 10_000
_classifier: dict[str, Any] = {}


def toy_classifier() -> tuple[torch.nn.Module, str]:
    """The committed toy classifier and the sha256 of its weights."""
    if "net" not in _classifier:
        from accel.toy import bundled_weights
        from accel.toy.classifier import ToyClassifier

        path = bundled_weights("toy_classifier")
        if path is None:
            raise FileNotFoundError("accel/toy/weights/toy_classifier.safetensors is missing; run "
                                    "`argen train-toy classifier`")
        net = ToyClassifier()
        load_strict(net, read_checkpoint(path), f"toy classifier {path}")
        _classifier["net"] = net.eval()
        _classifier["sha"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return _classifier["net"], _classifier["sha"]


@torch.no_grad()
def classifier_outputs(images_uint8: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, H, W, 3] -> (features float64 [N, 256], predicted class [N])."""
    net, _ = toy_classifier()
    feats, preds = [], []
    for i in range(0, len(images_uint8), batch):
        x = torch.from_numpy(images_uint8[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        f, logits = net.features_and_logits(x)
        feats.append(f.double().numpy())
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def reference_stats() -> FeatureStats:
    from jobs.train_toy import toy_images

    _, sha = toy_classifier()
    path = CACHE_DIR / "toy" / f"reference_stats_{sha}_seed{REFERENCE_SEED}_n{REFERENCE_SAMPLES}.npz"
    if path.exists():
        with np.load(path) as f:
            return FeatureStats(int(f["n"]), f["mean"], f["m2"])
    images, _ = toy_images(REFERENCE_SEED, REFERENCE_SAMPLES)
    stats = FeatureStats.from_features(classifier_outputs(images)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, n=stats.n, mean=stats.mean, m2=stats.m2)
    return stats


def toy_quality(gen: Any, n: int, batch_size: int = 100, seed_offset: int = 0) -> dict[str, Any]:
    """Generate n class-balanced samples with `gen` and score them (toy FID, class-consistency, speed)."""
    images, seconds, flops, counters = [], 0.0, 0.0, {}
    t0 = time.perf_counter()
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        out = gen.generate([i % gen.num_classes for i in idx], seeds=[i + seed_offset for i in idx])
        images.append(out.images)
        seconds += out.stats["seconds"]
        flops += out.stats["flops"] * len(idx)
        for k, v in out.stats.items():
            if isinstance(v, (int, float)) and k not in ("seconds", "images") and not k.startswith("flops"):
                counters[k] = counters.get(k, 0.0) + float(v) * len(idx)
    images = np.concatenate(images)
    feats, preds = classifier_outputs(images)
    labels = np.arange(n) % gen.num_classes
    return {
        "fid": fid_from_stats(FeatureStats.from_features(feats), reference_stats()),
        "class_consistency": float(np.mean(preds == labels)),
        "samples": n, "generate_seconds": seconds, "wall_seconds": time.perf_counter() - t0,
        "flops_per_image": flops / n, **{k: v / n for k, v in counters.items()},
    }
