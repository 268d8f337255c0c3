"""One column of Wu et al. (2017): ResNet-50 with unit removal and the SharpMask-like head (Sec. 3.1, 3.4, 4.2).

Wu, Shen & van den Hengel, "Real-time Semantic Image Segmentation via Spatial Sparsity", arXiv:1712.00213
(2017). Builders: ``archsearch.builders.wu2017``.

A column is split in two so that the full-resolution column of the sparse models can run its backbone per
region crop (Sec. 3.4, Fig. 4: "we 'uncrop' the extracted features and in-column connections"):

- :meth:`Column.encode` — the backbone: the raw stage features that feed the top layer and the in-column (jump)
  connections. These are the maps that are "uncropped" (put back together) before anything else runs on them.
- :meth:`Column.decode` — the whole head on (uncropped) maps: the top layer, the 1×1 jump layers, up-sampling,
  merging, the dilated 3×3 hidden layers, the cross-column inputs and the classifier. Only the backbone is
  skipped for the regions fast inference leaves out: Table 3's costs are affine in the regions computed with a
  step of 1/32 of the full column's backbone (per 256-pixel region at 1024×2048) and an intercept that holds
  the whole-map head (``variants``).

Head (Table 1, Fig. 2 "SharpMask-like"), levels named by their stride ``L`` relative to the column input:

- top level ``L = output_stride``: a layer on the raw stage-5 features ``C5``: 3×3, dilation ``96/L``
  ("dilations so that the receptive fields have sizes around 200": 2·d·L + 1 = 193 px; 3, 6, 12 at 1/32, 1/16,
  1/8 in the third model), or 1×1 in the optimized full-resolution column (Sec. 3.4);
- every lower level ``L`` down to 4: ``m_L = up(f_2L) + jump_L(C_L) [+ cross_L]``; a jump is a 1×1 layer on the
  raw features of the stage at that stride; above 1/4, a 3×3 hidden layer with dilation ``96/L`` gives
  ``f_L``; at 1/4 the classifier (1×1; 3×3 in the first model of Table 1, output stride 8) gives the logits.

Widths: 128 everywhere (Table 1); optimized (Sec. 3.4) the merged maps at 1/16, 1/8, 1/4 have 128, 64 and 32
channels ("reduce the number of kernels as the feature maps grow spatially"), the top layer has 8 groups and the
jump 1×1 layers 8, 4 and 2 groups.

Backbone: the shared ``resnet.ResNet50`` (torchvision layout). ``stride_in_1x1=True`` moves the stride of the
first unit of stages 3–5 from its 3×3 to its first 1×1 convolution, which is ResNet-50 as published by He et al.
[10] (the paper's backbone; torchvision's "v1.5" strides the 3×3). Shapes are unchanged, so torchvision-layout
weights load either way; the paper's costs (the third model of Table 1, at 1024×2048) are those of the
1×1-strided network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from archsearch.builders.layers import ConvBNReLU, upsample_to
from archsearch.builders.resnet import ResNet50

RF_SPAN = 96  # dilation · stride of every hidden 3×3 layer: receptive field 2·96 + 1 = 193 ≈ 200 px (Sec. 4.2)
PLAIN_WIDTH = 128  # Table 1: hidden layers of 128 kernels
OPTIMIZED_WIDTHS = {16: 128, 8: 64, 4: 32}  # Sec. 3.4: merged maps at 1/16, 1/8, 1/4
OPTIMIZED_JUMP_GROUPS = {16: 8, 8: 4, 4: 2}  # Sec. 3.4: groups of the 1×1 layers in the jump connections
OPTIMIZED_TOP_GROUPS = 8  # Sec. 3.4: groups of the layers directly on top of the raw features
CROSS_KERNEL = 3  # cross-column connections: 3×3 (Table 2/5: +6g from SCTF to ISCTF; 1×1 would add 0.7g)
STAGE_STRIDES = (4, 8, 16, 32)  # strides of stages 2–5 without dilation


def backbone(
    units: Sequence[int], output_stride: int = 32, stride_in_1x1: bool = True, stem: str = "resnet"
) -> ResNet50:
    """The shared ResNet-50 with ``units`` kept per stage; optionally strided in the first 1×1 (He et al.)."""
    return ResNet50(units=units, output_stride=output_stride, stride_in_1x1=stride_in_1x1, stem=stem)


def stage_strides(output_stride: int) -> tuple[int, ...]:
    """Stride of stages 2–5 relative to the input at an output stride (dilation keeps the deeper ones)."""
    return tuple(min(s, output_stride) for s in STAGE_STRIDES)


class Column(nn.Module):
    """ResNet-50 + SharpMask-like head; ``forward`` gives ``(logits at 1/4, features by level)``.

    ``cross`` maps a level stride to the channels of the cross-column input added there (ISCTF, Sec. 3.4);
    the feature dict returned by :meth:`decode` holds ``f_L`` for the levels below the top and ``m_4`` (the
    classifier's input), which a half-resolution column hands to a full-resolution one.
    """

    def __init__(
        self,
        units: Sequence[int],
        num_classes: int,
        *,
        output_stride: int = 32,
        optimized: bool = False,
        top_kernel: int = 3,
        classifier_kernel: int = 1,
        stride_in_1x1: bool = True,
        cross: dict[int, int] | None = None,
        stem: str = "resnet",
    ) -> None:
        super().__init__()
        # output_stride and units are validated by the knobs (SharpMaskKnobs.check). This one is structural: the
        # optimized widths and groups are defined per level of a stride-32 column, and no knob combination asks for
        # another (the multi-column columns are always stride 32; the single column is never optimized).
        if optimized and output_stride != 32:
            raise ValueError("the optimized head (Sec. 3.4) is defined for output stride 32")
        self.output_stride = output_stride
        self.backbone = backbone(units, output_stride, stride_in_1x1, stem)
        strides = stage_strides(output_stride)
        self.levels = [output_stride // 2**i for i in range(output_stride.bit_length()) if output_stride // 2**i >= 4]
        lower = self.levels[1:]
        width = dict(OPTIMIZED_WIDTHS) if optimized else dict.fromkeys(lower, PLAIN_WIDTH)
        top_width = width[lower[0]]
        channels = self.backbone.out_channels  # stages 2..5 (0 for a removed stage)
        self.has_top = units[3] > 0
        self.top: nn.Module | None = None
        if self.has_top:
            self.top = ConvBNReLU(
                channels[3],
                top_width,
                top_kernel,
                dilation=RF_SPAN // output_stride if top_kernel == 3 else 1,
                groups=OPTIMIZED_TOP_GROUPS if optimized else 1,
            )
        self.jumps = nn.ModuleDict()
        self.hidden = nn.ModuleDict()
        for level in lower:
            stage = strides.index(level)
            groups = OPTIMIZED_JUMP_GROUPS[level] if optimized else 1
            self.jumps[str(level)] = ConvBNReLU(channels[stage], width[level], 1, groups=groups)
            if level > 4:
                self.hidden[str(level)] = ConvBNReLU(width[level], width[level // 2], 3, dilation=RF_SPAN // level)
        self.cross = nn.ModuleDict()
        for level, in_ch in (cross or {}).items():
            out_ch = top_width if level == output_stride else width[level]
            self.cross[str(level)] = ConvBNReLU(in_ch, out_ch, CROSS_KERNEL)
        self.feature_channels = width[4]
        self.classifier = nn.Conv2d(width[4], num_classes, classifier_kernel, padding=classifier_kernel // 2)
        self._stage_of = {level: strides.index(level) for level in lower}

    def feature_dims(self) -> dict[int, int]:
        """Channels of the features :meth:`decode` returns, by level (``f_L`` for 4 < L < top; ``m_4``)."""
        dims = {level: _out_channels(self.hidden[str(level)]) for level in self.levels[1:] if level > 4}
        dims[4] = self.feature_channels
        return dims

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone: raw stage features by the head layer they feed (``jump{L}``, ``top``), the maps that
        can be computed per crop and uncropped."""
        feats = self.backbone(x)
        out: dict[str, torch.Tensor] = {}
        for level, stage in self._stage_of.items():
            f = feats[stage]
            assert f is not None
            out[f"jump{level}"] = f
        if feats[3] is not None:
            out["top"] = feats[3]
        return out

    def decode(
        self, enc: dict[str, torch.Tensor], cross: dict[int, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The head on (uncropped) backbone features: top and jump layers, merges, hidden layers, cross-column
        inputs, classifier."""
        cross = cross or {}
        top_level = self.levels[0]
        f: torch.Tensor | None = None
        if "top" in enc:
            f = self.top(enc["top"])  # type: ignore[misc]
        if str(top_level) in self.cross:
            c = self.cross[str(top_level)](cross[top_level])
            f = c if f is None else f + c
        feats: dict[int, torch.Tensor] = {}
        m = f
        for level in self.levels[1:]:
            jump = self.jumps[str(level)](enc[f"jump{level}"])
            m = jump if f is None else upsample_to(f, jump.shape[-2:]) + jump
            if str(level) in self.cross:
                m = m + self.cross[str(level)](cross[level])
            if level > 4:
                f = self.hidden[str(level)](m)
                feats[level] = f
        assert m is not None
        feats[4] = m
        return self.classifier(m), feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        return self.decode(self.encode(x))


def _out_channels(block: nn.Module) -> int:
    """Output channels of a hidden layer (a :class:`ConvBNReLU`)."""
    assert isinstance(block, ConvBNReLU)
    return block.out_channels
