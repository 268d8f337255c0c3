"""Wu, Shen & van den Hengel, "Real-time Semantic Image Segmentation via Spatial Sparsity", arXiv:1712.00213
(2017). Two builders:

- ``sharpmask_fcn`` — the single-column SharpMask-like FCN of Table 1 (output stride 8 | 16 | 32).
- ``sparse_two_column`` — columns at several input scales with the fusions of Fig. 3 and Sec. 3.4
  (max | sum | attention | ctf | sctf | isctf), spatial sparsity (Sec. 3.3), fast inference (Fig. 1),
  the optimized head (Sec. 3.4) and residual unit removal per column (Sec. 3.5, Table 4).

Modules, each importing only those above it: ``column`` (ResNet-50 with unit removal + SharpMask-like head),
``sparsity`` (regions, sparse weight, penalty, crop/uncrop), ``knobs`` (the two knob sets and their rules),
``two_column`` (fusion, classic and fast inference), ``variants`` (the paper's rows and numbers, and the details
the paper leaves open with how this build settles them and what it costs against the paper); this module
registers the builders.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from archsearch.builders.registry import register
from archsearch.builders.resnet import load_pretrained
from archsearch.builders.wu2017.column import Column
from archsearch.builders.wu2017.knobs import (
    MODEL_A_FULL,
    MODEL_A_HALF,
    SharpMaskKnobs,
    TwoColumnKnobs,
)
from archsearch.builders.wu2017.two_column import TwoColumnFCN
from archsearch.builders.wu2017.variants import SHARPMASK_VARIANTS, TWO_COLUMN_VARIANTS

PAPER = "wu2017_spatial_sparsity_resnet50_unit_removal"

__all__ = [
    "MODEL_A_FULL",
    "MODEL_A_HALF",
    "PAPER",
    "SharpMaskFCN",
    "SharpMaskKnobs",
    "TwoColumnFCN",
    "TwoColumnKnobs",
    "sharpmask_fcn",
    "sparse_two_column",
]


@register(
    "sharpmask_fcn",
    knobs=SharpMaskKnobs,
    paper=PAPER,
    summary="Wu 2017 Table 1: SharpMask-like ResNet-50 FCN (logits at 1/4)",
    variants=SHARPMASK_VARIANTS,
)
def sharpmask_fcn(k: SharpMaskKnobs, num_classes: int) -> nn.Module:
    return SharpMaskFCN(k, num_classes)


class SharpMaskFCN(nn.Module):
    """One column; ``forward`` returns logits at 1/4 of the input (train and eval)."""

    def __init__(self, k: SharpMaskKnobs, num_classes: int) -> None:
        super().__init__()
        self.column = Column(
            k.units,
            num_classes,
            output_stride=k.output_stride,
            classifier_kernel=3 if k.output_stride == 8 else 1,
            stride_in_1x1=k.stride_in_1x1,
            stem=k.stem,
        )
        if k.weights:
            load_pretrained("sharpmask_fcn", [self.column.backbone], k.weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.column(images)[0]


@register(
    "sparse_two_column",
    knobs=TwoColumnKnobs,
    paper=PAPER,
    summary="Wu 2017: multi-column ResNet-50 FCN, CTF fusion, spatial sparsity, fast inference, unit removal",
    variants=TWO_COLUMN_VARIANTS,
)
def sparse_two_column(k: TwoColumnKnobs, num_classes: int) -> nn.Module:
    model = TwoColumnFCN(k, num_classes)
    if k.weights:
        backbones = [col.backbone for col in model.columns if isinstance(col, Column)]
        load_pretrained("sparse_two_column", backbones, k.weights)
    return model
