"""An exponential moving average (EMA) of a model's weights and batch-norm buffers, to evaluate instead of the
weights after the last step.

Polyak & Juditsky ("Acceleration of stochastic approximation by averaging", SIAM J. Control Optim. 30(4), 1992)
showed that averaging SGD iterates lowers their variance; the exponential form with a decay that warms up,
``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, is TensorFlow's ``ExponentialMovingAverage`` (with
``num_updates``), as in Tan & Le, "EfficientNet" (ICML 2019) and timm's ``ModelEmaV2``. The batch-norm running
statistics are averaged with the same decay, so the averaged weights carry statistics of their own rather than
those of the last few batches. Built on :class:`torch.optim.swa_utils.AveragedModel` (``use_buffers=True``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

#: updates over which the decay warms up (``(1 + n) / (WARMUP + n)``)
WARMUP = 10


def decay_at(decay: float, updates: int) -> float:
    """The decay of the update after ``updates`` earlier ones: ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (WARMUP + updates))


def ema(model: nn.Module, decay: float) -> AveragedModel:
    """An :class:`AveragedModel` of ``model`` (its first :meth:`update_parameters` copies the weights; each later
    one moves every floating-point parameter and buffer by ``1 − decay_at(decay, n)`` towards the model's and
    copies integer buffers). Its ``module`` is the averaged network, in the model's layout and on its device."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay {decay}; expected a number in (0, 1)")

    def update(
        averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
        current: list[torch.Tensor] | tuple[torch.Tensor, ...],
        n: torch.Tensor | int,
    ) -> None:
        if not averaged[0].is_floating_point():  # e.g. batch norm's num_batches_tracked
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - decay_at(decay, int(n)))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
