"""Tiny runs shared by the training and checkpoint tests: a 250/100-image slice of the bundled
sample (all 10 classes) and a small MLP with dropout (so a resume must restore the RNG too)."""

from __future__ import annotations

import torch
from torch import nn

from d2l_utils.data import BatchLoader, load_sample

BATCH, N_BATCHES = 50, 5  # 250 training images


def sample_loaders(seed: int = 1) -> tuple[BatchLoader, BatchLoader]:
    train = load_sample(train=True).subset(torch.arange(0, 2000, 8))  # 250 images, all classes
    test = load_sample(train=False).subset(torch.arange(0, 1000, 10))  # 100 images
    return BatchLoader(train, BATCH, shuffle=True, seed=seed), BatchLoader(test, BATCH)


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    )
