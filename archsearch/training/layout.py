"""The memory layout proxy training and evaluation run in (``proxy.memory_format``).

Convolutions with few channels per group (depth-wise, grouped, the narrow layers of real-time networks) and
pooling run faster on channels-last (NHWC) tensors on the CPU (oneDNN's preferred layout) and with tensor cores
on CUDA (cuDNN's NHWC kernels under mixed precision). The layout changes which kernels run, not what is computed:
results agree with NCHW to rounding.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn

T = TypeVar("T", nn.Module, torch.Tensor)


def memory_format(setting: str, device: torch.device | str) -> torch.memory_format:
    """The layout of ``setting`` (``auto | channels_last | nchw``) on ``device``: ``auto`` is channels-last on
    the CPU and CUDA, NCHW (``torch.contiguous_format``) elsewhere."""
    if setting == "nchw":
        return torch.contiguous_format
    if setting == "channels_last":
        return torch.channels_last
    if setting != "auto":
        raise ValueError(f"memory_format {setting!r}; allowed: auto, channels_last, nchw")
    kind = torch.device(device).type
    return torch.channels_last if kind in ("cpu", "cuda") else torch.contiguous_format


def to_layout(x: T, fmt: torch.memory_format) -> T:
    """A model's 4-D weights, or a 4-D batch, in layout ``fmt`` (a model in place; other tensors unchanged)."""
    if isinstance(x, nn.Module):
        return x.to(memory_format=fmt)  # type: ignore[call-overload]  # a keyword torch's stubs leave out
    if x.ndim != 4:
        return x
    return x.contiguous(memory_format=fmt)


def layout_of(model: nn.Module) -> torch.memory_format:
    """Channels-last when one of ``model``'s 4-D parameters is channels-last and not NCHW-contiguous (a weight
    with a 1×1 kernel or one input channel per group is both), else NCHW."""
    for p in model.parameters():
        if p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format
