"""NDNet — narrow deep backbone in an FCN32 head (Yang et al., "Real time backbone for semantic segmentation").

Paper: Z. Yang, H. Yu, Q. Fu, W. Sun, W. Jia, M. Sun, Z.-H. Mao, "Real time backbone for semantic segmentation",
arXiv:1903.06922 (2019).

Structure (Table I, Fig. 3(b), Fig. 4):
- conv1: 3×3 stride-2 convolution (1/2), then 3×3 stride-2 max pooling (1/4);
- block1..block3: ``d_i`` narrow residual layers each (1/8, 1/16, 1/32); a residual layer stacks two separable
  convolutions (3×3 depth-wise + 1×1 point-wise, batch norm after each separable convolution, "each separable
  convolution is viewed as a single layer"): the first 1×1 reduces ``e·n_md → n_md``, the second restores
  ``n_md → e·n_md`` (Eq. 6). The first layer of a block has stride 2; where its input width differs it uses a
  1×1 stride-2 projection shortcut. conv1 outputs ``e·n_md1`` channels so block1 needs none;
- FCN32 head: a 3×3 (depth-wise) context convolution over the backbone output, then a 1×1 classifier.

Named variants (``VARIANTS``, ``archsearch.build("ndnet.ndnet45")``): the rows of Table II with the paper's
numbers; ``tests/test_ndnet.py`` checks each parameter count against its variant's (19 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from archsearch.builders.layers import ConvBNReLU
from archsearch.builders.registry import Knobs, Variant, knob, register

PAPER = "yang_ndnet_narrow_deep_backbone"


@dataclass(frozen=True)
class NDNetKnobs(Knobs):
    """NDNet knobs; defaults are NDNet45, the paper's chosen backbone (Table I; variant ``ndnet.ndnet45``)."""

    widths: tuple[int, ...] = knob(
        (16, 32, 64),
        paper="channel combination [n_md1, n_md2, n_md3]",
        doc="middle width n_md of the residual layers in block1..block3",
        length=3,
        item_low=1,
        item_high=1024,
    )
    depths: tuple[int, ...] = knob(
        (4, 12, 6),
        paper="depth combination [d1, d2, d3]",
        doc="number of residual layers d in block1..block3",
        length=3,
        item_low=1,
        item_high=64,
    )
    expansion: int = knob(
        4, paper="e", doc="expansion: residual layers are e·n_md wide at input and output", low=1, high=8
    )


class SepConv(nn.Sequential):
    """Separable convolution as one layer: 3×3 depth-wise, 1×1 point-wise, batch norm (ReLU optional)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class NarrowResidual(nn.Module):
    """Fig. 3(b): two separable convolutions whose 1×1 parts reduce to n_md and restore to e·n_md."""

    def __init__(self, in_ch: int, mid: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.reduce = SepConv(in_ch, mid, stride)
        self.restore = SepConv(mid, out_ch, relu=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if in_ch == out_ch:
                self.shortcut = nn.MaxPool2d(1, stride)  # parameter-free strided identity
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.restore(self.reduce(x)) + self.shortcut(x))


class NDNetFCN32(nn.Module):
    def __init__(self, k: NDNetKnobs, num_classes: int) -> None:
        super().__init__()
        e = k.expansion
        stem = e * k.widths[0]
        self.conv1 = ConvBNReLU(3, stem, 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks = []
        in_ch = stem
        for n_md, depth in zip(k.widths, k.depths, strict=False):
            layers = []
            for i in range(depth):
                layers.append(NarrowResidual(in_ch, n_md, e * n_md, stride=2 if i == 0 else 1))
                in_ch = e * n_md
            blocks.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = blocks
        self.context = ConvBNReLU(in_ch, in_ch, 3, groups=in_ch)
        self.classifier = nn.Conv2d(in_ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.block3(self.block2(self.block1(x)))
        return self.classifier(self.context(x))


def _table2(
    name: str, label: str, widths: tuple[int, int, int], depths: tuple[int, int, int], expansion: int, **paper: float
) -> Variant:
    return Variant(
        name,
        {"widths": widths, "depths": depths, "expansion": expansion},
        paper,
        f"Yang et al., Table II, row '{label.replace(' (', '(')}' (FCN32, Cityscapes val; FPS on a Titan X at "
        "1024×2048)",
        label,
    )


# Table II: max width (channels), mIoU (%), parameters, FPS; "-" cells are left out. Channel and depth
# combinations: Table I and Sec. II; the wider NDNet29 uses [64, 128, 256] (Sec. III-C); "(e=2)": expansion 2.
VARIANTS = (
    _table2(
        "wider_ndnet29", "wider NDNet29", (64, 128, 256), (3, 8, 3), 4, max_width=1024, params=3_505_000, fps=28.23
    ),
    _table2("ndnet29", "NDNet29", (24, 48, 96), (3, 8, 3), 4, max_width=384, miou_pct=60.0, params=515_000, fps=55.23),
    _table2("ndnet29_e2", "NDNet29 (e=2)", (24, 48, 96), (3, 8, 3), 2, max_width=192, miou_pct=57.7, fps=68.30),
    _table2("ndnet45", "NDNet45", (16, 32, 64), (4, 12, 6), 4, max_width=256, miou_pct=60.6, params=386_000, fps=54.34),
    _table2("ndnet45_e2", "NDNet45 (e=2)", (16, 32, 64), (4, 12, 6), 2, max_width=128, miou_pct=57.8, fps=67.02),
    _table2("ndnet61", "NDNet61", (12, 24, 48), (6, 16, 8), 4, max_width=192, miou_pct=59.5, params=292_000, fps=52.36),
    _table2("ndnet61_e2", "NDNet61 (e=2)", (12, 24, 48), (6, 16, 8), 2, max_width=96, miou_pct=56.4, fps=57.47),
)


@register(
    "ndnet",
    knobs=NDNetKnobs,
    paper=PAPER,
    summary="NDNet narrow deep backbone, FCN32 head (logits at 1/32)",
    variants=VARIANTS,
)
def ndnet(k: NDNetKnobs, num_classes: int) -> nn.Module:
    return NDNetFCN32(k, num_classes)
