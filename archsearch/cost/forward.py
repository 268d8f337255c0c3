"""What a cost measurement runs: a model in eval mode, and its timed forward (logits up-sampled to the input)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its train/eval mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class TimedForward(nn.Module):
    """What is timed: ``model``'s main logits (a ``SegOutput``'s ``.logits``) up-sampled bilinearly
    (``align_corners=False``) to the input's size when they are smaller — the one rule for every builder, so a
    builder that up-samples inside its forward (ICNet, PSPNet) and one that leaves it to the caller (NDNet,
    Fast-SCNN, the FCNs) pay the same final up-sampling."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(x.shape[-2:]):
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits
