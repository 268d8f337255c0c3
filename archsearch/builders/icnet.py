"""ICNet — image cascade network (Zhao et al., "ICNet for real-time semantic segmentation on high-resolution
images", ECCV 2018).

Paper: H. Zhao, X. Qi, X. Shen, J. Shi, J. Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution
Images", ECCV 2018, arXiv:1704.08545 (Sec. 4, 5, Fig. 4, Fig. 6, Table 4).

Branches (Fig. 4, Sec. 4.1):
- **low resolution** (top): the compressed PSPNet50 (:mod:`archsearch.builders.pspnet`: dilated ResNet-50 at
  output stride 8, summed pyramid pooling, 1×1 conv) on the 1/4 input, giving features at 1/32;
- **medium resolution**: the 1/2 input through the first convolutions of the same ResNet-50 — stem,
  stage 2 and the first unit of stage 3 — down to 1/16 ("sharing weights and computation", SWC, Fig. 4). As in
  the released model, the top branch then continues from this 1/16 map down-sampled ×2 (1/32, as the 1/4 input
  would give there), so the shared layers run once. With PSPNet's deep stem (``stem: deep``, the default: three
  3×3 convolutions) that is the paper's 17 convolutions (Sec. 4.2: 3 + stage 2's 9 + 3 in the unit + the two
  projection shortcuts); with torchvision's 7×7 stem (``stem: resnet``) 15;
- **high resolution**: three 3×3 stride-2 convolutions (with batch norm and ReLU) on the full input, to 1/8.

Cascade feature fusion (CFF, Sec. 5, Fig. 6): ``F1`` is up-sampled ×2 to the size of ``F2``, refined by a 3×3
dilated convolution; ``F2`` goes through a 1×1 projection; two batch norms, sum, ReLU. The auxiliary classifier
on the up-sampled ``F1`` is the cascade label guidance (Sec. 4.1, Eq. 1): the classifier of each branch's
output after ×2 up-sampling — at 1/16 (``cls_sub4``), 1/8 (``cls_sub24``) and 1/4 (``cls_sub124``), with loss
weights λ1, λ2, λ3. In testing only the last one runs, followed by the ×4 up-sampling to the input size ("the
final upsampling is only used during testing", Fig. 4).

Settings (Table 4): ``sub4`` only the top branch on the 1/4 input (final classifier ``cls_sub4`` at 1/16);
``sub24`` the top two branches (``cls_sub4`` guidance with λ1, final ``cls_sub24`` at 1/8); ``sub124`` all three
(λ1, λ2 guidance, final ``cls_sub124`` at 1/4). The final prediction's loss weight is λ3 in every setting;
the same modules carry the same names in every setting, so weights move between settings.

Widths: the full-width (keep rate 1) ICNet has the PSPNet50 widths (2048-channel stage 5, 512 after the pyramid
pooling), 256-channel CFF outputs and a 64-64-128 high-resolution branch; the paper's ICNet is built on
PSPNet50 compressed by half (Sec. 6.1, Table 3), so the default ``keep_rate`` 0.5 gives the released widths
(1024, 256, 128 and 32-32-64).

Pre-trained start (``weights``): as for PSPNet50 (:mod:`archsearch.builders.pspnet`), a local torchvision-layout
ImageNet ResNet-50 file is loaded into the full-width backbone, the stem reported missing when it does not fit.

Prunable convolutions: all convolutions except the three classifiers (their outputs are the classes); the
input convolutions keep their 3 input channels.

Output: eval mode → logits at the input size (after the final up-sampling); train mode →
:class:`~archsearch.builders.layers.SegOutput` with the final logits (1/4 for ``sub124``) and the guidance
logits as ``aux`` ``(λ, logits)`` pairs. The training loop weights the main logits by 1, so a λ3 other than 1
is passed as one more auxiliary pair ``(λ3 − 1, final logits)``: the total is exactly Eq. 1. Each term is
scored against the ground truth down-sampled to its logits (``labels_at_logits``: "1/16, 1/8 and 1/4 ground
truth", Sec. 4.1), not against full-resolution labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.builders.layers import ConvBNReLU, SegOutput, upsample_to
from archsearch.builders.pspnet import (
    DEEP_STEM_PAPER,
    HEAD_WIDTH,
    KEEP_RATE_LOW,
    PAPER,
    PyramidHead,
    load_backbone_weights,
    weights_knob,
)
from archsearch.builders.registry import Knobs, Variant, knob, register
from archsearch.builders.resnet import FULL_UNITS, ResNet50, scaled, stem_knob

BRANCHES = ("sub4", "sub24", "sub124")
CFF_WIDTH = 256  # CFF output channels C3 at full width (128 in the released, half-compressed model)
SUB1_WIDTHS = (64, 64, 128)  # high-resolution branch at full width (32, 32, 64 released)


@dataclass(frozen=True)
class ICNetKnobs(Knobs):
    """ICNet knobs; defaults are the paper's final model (sub124, compressed by half, λ = 0.4, 0.4, 1)."""

    branches: str = knob(
        "sub124",
        paper="'sub4' | 'sub24' | 'sub124' (Sec. 6.2, Table 4)",
        doc="which resolution branches are used: 1/4 only, 1/4 + 1/2, or 1/4 + 1/2 + 1",
        choices=BRANCHES,
    )
    keep_rate: float = knob(
        0.5,
        paper="kernel keeping rate (Sec. 5.2; the final model compresses PSPNet50 by half, Table 3)",
        doc="every prunable convolution keeps round(keep_rate·C) filters of the full-width ICNet",
        low=KEEP_RATE_LOW,
        high=1.0,
    )
    loss_weights: tuple[float, ...] = knob(
        (0.4, 0.4, 1.0),
        paper="λ1, λ2, λ3 (Eq. 1; 0.4 for the guidance losses, Sec. 5)",
        doc="cascade label guidance loss weights at 1/16, 1/8 and 1/4 (the last one: the final prediction)",
        length=3,
        item_low=0.0,
        item_high=10.0,
    )
    cff_dilation: int = knob(
        2,
        paper="dilation of the CFF 3×3 convolution (Fig. 6 and the released model: 2)",
        doc="dilation of the 3×3 convolution that refines the up-sampled F1 in each CFF unit",
        low=1,
        high=8,
    )
    stem: str = stem_knob("deep", paper=DEEP_STEM_PAPER)
    weights: str | None = weights_knob()

    def check(self) -> None:
        if self.loss_weights[2] <= 0:
            self.fail("loss_weights", f"λ3 (the final prediction's weight) must be > 0, got {self.loss_weights[2]}")


class CascadeFeatureFusion(nn.Module):
    """CFF unit (Fig. 6): ``relu(bn(dilated_conv3x3(up2(F1))) + bn(conv1x1(F2)))``.

    ``forward`` returns the fused map (size of ``F2``, ``out_ch`` channels) and the up-sampled ``F1`` on which
    the auxiliary classifier of the cascade label guidance runs.
    """

    def __init__(self, low_ch: int, high_ch: int, out_ch: int, dilation: int = 2) -> None:
        super().__init__()
        self.conv_low = nn.Conv2d(low_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_low = nn.BatchNorm2d(out_ch)
        self.proj_high = nn.Conv2d(high_ch, out_ch, 1, bias=False)
        self.bn_high = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        up = upsample_to(f1, f2.shape[-2:])
        fused = self.relu(self.bn_low(self.conv_low(up)) + self.bn_high(self.proj_high(f2)))
        return fused, up


def _down(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ICNet(nn.Module):
    """Image cascade network (Fig. 4) with ``branches`` and a kernel keep rate."""

    def __init__(self, k: ICNetKnobs, num_classes: int) -> None:
        super().__init__()
        r = k.keep_rate
        self.branches = k.branches
        self.loss_weights = k.loss_weights
        self.backbone = ResNet50(FULL_UNITS, output_stride=8, width=r, stem=k.stem)  # 1/4 input → 1/32
        self.head = PyramidHead(self.backbone.out_channels[3], scaled(HEAD_WIDTH, r))
        self.cls_sub4 = nn.Conv2d(self.head.out_channels, num_classes, 1)
        if k.branches in ("sub24", "sub124"):
            cff = scaled(CFF_WIDTH, r)
            self.cff_sub24 = CascadeFeatureFusion(
                self.head.out_channels, self.backbone.out_channels[1], cff, k.cff_dilation
            )
            self.cls_sub24 = nn.Conv2d(cff, num_classes, 1)
        if k.branches == "sub124":
            w1, w2, w3 = (scaled(c, r) for c in SUB1_WIDTHS)
            self.sub1 = nn.Sequential(ConvBNReLU(3, w1, 3, 2), ConvBNReLU(w1, w2, 3, 2), ConvBNReLU(w2, w3, 3, 2))
            self.cff_sub124 = CascadeFeatureFusion(cff, w3, cff, k.cff_dilation)
            self.cls_sub124 = nn.Conv2d(cff, num_classes, 1)
        load_backbone_weights("icnet", self.backbone, k.weights, r)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_stem(x)

    def _deep(self, x: torch.Tensor) -> torch.Tensor:
        """Stages 4 and 5 (dilated) and the pyramid head: 1/32 of the full input."""
        b = self.backbone
        return self.head(b.layer4(b.layer3(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        b = self.backbone
        guidance: list[torch.Tensor] = []
        if self.branches == "sub4":
            top = self._deep(b.layer2(b.layer1(self._stem(_down(x, 0.25)))))
            final = self.cls_sub4(_up2(top))
        else:
            mid = b.layer2[0](b.layer1(self._stem(_down(x, 0.5))))  # 1/16, shared with the top branch
            top = self._deep(b.layer2[1:](_down(mid, 0.5)))  # 1/32
            fused, up = self.cff_sub24(top, mid)  # 1/16
            if self.training:
                guidance.append(self.cls_sub4(up))
            if self.branches == "sub24":
                final = self.cls_sub24(_up2(fused))
            else:
                fused, up = self.cff_sub124(fused, self.sub1(x))  # 1/8
                if self.training:
                    guidance.append(self.cls_sub24(up))
                final = self.cls_sub124(_up2(fused))  # 1/4
        if not self.training:
            return upsample_to(final, x.shape[-2:])
        aux = list(zip(self.loss_weights, guidance, strict=False))
        last = self.loss_weights[2]
        if last != 1.0:
            aux.append((last - 1.0, final))
        return SegOutput(final, aux=aux, labels_at_logits=True)  # Sec. 4.1: 1/16, 1/8, 1/4 ground truth


def _table4(branches: str, **paper: float) -> Variant:
    return Variant(
        f"{branches}_keep050",
        {"branches": branches, "keep_rate": 0.5},
        paper,
        f"Zhao et al. 2018, Table 4 column '{branches}'"
        + (" = Table 3 column 'ICNet'" if branches == "sub124" else "")
        + " (Cityscapes val; one Titan X at 1024×2048, Sec. 6; speed-up and memory saving against the baseline"
        " pspnet50.os8_keep050)",
        branches,
    )


# Table 4: mIoU (%), time (ms), frames per second, speed-up (×), memory (GB), memory saving (×); all three settings
# on PSPNet50 compressed by half (Sec. 6.1).
VARIANTS = (
    _table4("sub4", miou_pct=59.6, latency_ms=18, fps=55.6, speedup_x=9.4, memory_gb=0.6, memory_save_x=15.3),
    _table4("sub24", miou_pct=66.5, latency_ms=25, fps=40, speedup_x=6.8, memory_gb=1.1, memory_save_x=8.4),
    _table4("sub124", miou_pct=67.7, latency_ms=33, fps=30.3, speedup_x=5.2, memory_gb=1.6, memory_save_x=5.8),
)


@register(
    "icnet",
    knobs=ICNetKnobs,
    paper=PAPER,
    summary="ICNet image cascade (sub4/sub24/sub124), CFF units, cascade label guidance; kernel keep rate",
    prune_knob="keep_rate",
    variants=VARIANTS,
)
def icnet(k: ICNetKnobs, num_classes: int) -> nn.Module:
    return ICNet(k, num_classes)
