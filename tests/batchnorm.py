"""Batch-norm layers made non-trivial for the tests that fold them into convolutions."""

from __future__ import annotations

import torch
import torch.nn as nn


def randomise_batch_norm(model: nn.Module) -> None:
    """Running statistics and affine parameters away from (0, 1, 1, 0), so that folding is not an identity."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            assert m.running_mean is not None and m.running_var is not None  # tracked: the default
            m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
