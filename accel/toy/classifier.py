"""The toy classifier: a small CNN trained on ToyShapes.

Its penultimate activations (256-d, after ReLU, like Inception's pool features) are the toy FID
features, and its predictions give class-consistency for toy generators.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from accel.toy.data import NUM_CLASSES


class ToyClassifier(nn.Module):
    feature_dim = 256

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.body = nn.Sequential(block(3, 32, 1), block(32, 64, 2), block(64, 128, 2))  # 32 -> 8
        self.fc = nn.Linear(128, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: images in [-1, 1], [N, 3, 32, 32] (other sizes are area-resized to 32)."""
        if x.shape[-1] != 32 or x.shape[-2] != 32:
            x = F.interpolate(x, size=(32, 32), mode="area")
        h = self.body(x).mean(dim=(2, 3))
        feats = F.relu(self.fc(h))
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]
