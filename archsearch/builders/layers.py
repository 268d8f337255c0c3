"""Blocks shared by several builders, and the model output contract.

Contract (DESIGN.md): in eval mode ``model(images)`` returns class logits ``(N, C, h, w)`` at any output
stride. In train mode it may return a :class:`SegOutput` with auxiliary ``(weight, logits)`` pairs and a
scalar ``penalty`` (or a plain tensor). One training loop serves every builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class SegOutput:
    """What a model returns in train mode."""

    logits: torch.Tensor
    aux: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    penalty: torch.Tensor | None = None
    # True: every loss term compares its logits with the labels down-sampled (nearest) to the logits' size, as
    # ICNet's cascade label guidance uses 1/16, 1/8, 1/4 ground truth; False: logits up-sampled to the labels
    labels_at_logits: bool = False


def logits_of(output: torch.Tensor | SegOutput) -> torch.Tensor:
    """The main logits of either form of output."""
    return output.logits if isinstance(output, SegOutput) else output


class ConvBNReLU(nn.Sequential):
    """``k×k`` convolution (no bias), batch norm, optional ReLU; padding keeps the size at stride 1."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, dilation * (kernel // 2), dilation, groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    @property
    def out_channels(self) -> int:
        """Channels of the output (those of the convolution)."""
        conv = self[0]
        assert isinstance(conv, nn.Conv2d)
        return conv.out_channels


class DSConv(nn.Sequential):
    """Depth-wise separable convolution: 3×3 depth-wise conv + BN (+ReLU), 1×1 point-wise conv + BN (+ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, relu: bool = True, dw_relu: bool = True) -> None:
        super().__init__(
            ConvBNReLU(in_ch, in_ch, 3, stride, groups=in_ch, relu=dw_relu),
            ConvBNReLU(in_ch, out_ch, 1, relu=relu),
        )


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear up-sampling (align_corners=False) to a spatial ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
