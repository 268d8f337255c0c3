"""PSPNet50 as optimised and compressed by Zhao et al. (2018), the baseline that ICNet starts from.

Paper: H. Zhao, X. Qi, X. Shen, J. Shi, J. Jia, "ICNet for Real-Time Semantic Segmentation on High-Resolution
Images", ECCV 2018, arXiv:1704.08545 (Sec. 3, Sec. 6, Tables 1 and 2).

Structure:
- a dilated ResNet-50 (the shared :class:`~archsearch.builders.resnet.ResNet50`, torchvision layout) whose
  feature map is at 1/``output_stride`` of the input (Table 1: 8, 16 or 32), with PSPNet's deep stem by default
  (three 3×3 convolutions, 64-64-128, the first of stride 2; ``stem: resnet`` for torchvision's 7×7);
- the pyramid pooling module changed as Sec. 6 says: the average-pooled maps (bins 1, 2, 3, 6 of PSPNet [33])
  are up-sampled and **summed** with the stage-5 feature instead of concatenated (2048 channels instead of
  4096), and the convolution after it is **1×1** instead of 3×3 (2048 → 512, batch norm, ReLU);
- dropout 0.1 and a 1×1 classifier (PSPNet [33]); in train mode also PSPNet's auxiliary head on stage 4
  (3×3 conv 1024 → 256, batch norm, ReLU, dropout, classifier) with loss weight 0.4 (Sec. 5, "as in [33]");
- kernel keep rate (Sec. 3.2, Table 2): every convolution keeps ``round(keep_rate·C)`` filters — the
  physically narrower network that L1 filter pruning (:mod:`archsearch.pruning`) produces.

Pre-trained start (``weights``): a local ImageNet ResNet-50 state dict in torchvision's layout is loaded into the
backbone of the full-width network (``keep_rate`` 1); with the deep stem the file's 7×7 stem does not fit, so the
stem and the two convolutions that read it start untrained and are named in one log line. A network built at a
keep rate below 1 is the pruned one: the trial's progressive pruning (:func:`archsearch.pruning.progressive`)
loads the file into the full network and narrows it, so :func:`build` of the narrow network alone does not load it.

Prunable convolutions: all convolutions except the two classifiers (their outputs are the classes); the input
convolution keeps its 3 input channels.

Output: in eval mode the logits up-sampled bilinearly to the input size (the test-time interpolation of the
released models, so that timings compare with ICNet's, which up-samples too); in train mode a
:class:`~archsearch.builders.layers.SegOutput` with the logits at 1/``output_stride`` and the auxiliary logits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from archsearch.builders.layers import ConvBNReLU, SegOutput, upsample_to
from archsearch.builders.registry import Knobs, Variant, knob, register
from archsearch.builders.resnet import FULL_UNITS, ResNet50, load_pretrained, scaled, stem_knob
from archsearch.util.errors import KnobError

PAPER = "zhao2018_icnet_cascade_pruning"

PYRAMID_BINS = (1, 2, 3, 6)  # PSPNet [33]: 1×1, 2×2, 3×3, 6×6 average pooling
HEAD_WIDTH = 512  # PSPNet's conv5_4 width (full keep rate)
AUX_WIDTH = 256  # PSPNet's auxiliary head width (full keep rate)
DROPOUT = 0.1  # PSPNet [33]

KEEP_RATE_LOW = 0.05
DEEP_STEM_PAPER = "PSPNet's deep ResNet-50 stem: three 3×3 convs, 64-64-128 (ICNet Sec. 4.2: 17 convs in branch two)"

log = logging.getLogger(__name__)


def weights_knob() -> str | None:
    """The ``weights`` knob of PSPNet50 and ICNet."""
    return knob(
        None,
        paper="ImageNet pre-trained ResNet-50, as PSPNet [33] starts (ICNet: 'modified from PSPNet', Sec. 5)",
        doc="local torchvision-layout ResNet-50 state dict, loaded into the full-width backbone (keep_rate 1; "
        "pruning narrows it); the 7×7 stem of a torchvision file does not fit stem 'deep' and is reported missing",
    )


def load_backbone_weights(builder: str, backbone: ResNet50, path: str | None, keep_rate: float) -> None:
    """Load ``path`` into the full-width backbone; at a keep rate below 1 only say why it is not loaded here."""
    if path is None:
        return
    if not isinstance(path, str) or not path:
        raise KnobError(builder, "weights", f"{path!r} is not allowed; allowed: the path of a local state dict file")
    if keep_rate < 1.0:
        log.info(
            "%s: weights %s not loaded at keep_rate %g: progressive pruning loads them into the full network "
            "and narrows it",
            builder,
            path,
            keep_rate,
        )
        return
    load_pretrained(builder, [backbone], path)


@dataclass(frozen=True)
class PSPNet50Knobs(Knobs):
    """PSPNet50 knobs; defaults are the uncompressed "PSPNet50 with dilation 8" of Fig. 2 / Table 1 / Table 2."""

    output_stride: int = knob(
        8,
        paper="downsample size (Table 1: 8, 16, 32)",
        doc="feature map at 1/output_stride of the input; dilation replaces the stride of stage 5 (16) or 4 and 5 (8)",
        choices=(8, 16, 32),
    )
    keep_rate: float = knob(
        1.0,
        paper="kernel keeping rate (Sec. 3.2, Table 2: 1, 0.5, 0.25)",
        doc="every prunable convolution keeps round(keep_rate·C) filters; progressive L1 pruning in the proxy",
        low=KEEP_RATE_LOW,
        high=1.0,
    )
    aux_weight: float = knob(
        0.4,
        paper="auxiliary loss weight 0.4 (Sec. 5, as in PSPNet [33])",
        doc="weight of the stage-4 auxiliary classifier's loss in training",
        low=0.0,
        high=1.0,
    )
    stem: str = stem_knob("deep", paper=DEEP_STEM_PAPER)
    weights: str | None = weights_knob()


class PyramidPoolingSum(nn.Module):
    """Pyramid pooling module with summation (Sec. 6): ``x + Σ_b up(avgpool_b(x))``, channels unchanged."""

    def __init__(self, bins: tuple[int, ...] = PYRAMID_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(b) for b in bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for pool in self.pools:
            out = out + upsample_to(pool(x), x.shape[-2:])
        return out


class PyramidHead(nn.Module):
    """Pyramid pooling (sum) followed by the 1×1 convolution that replaced PSPNet's 3×3 one (Sec. 6)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.ppm = PyramidPoolingSum()
        self.conv = ConvBNReLU(in_ch, out_ch, 1)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.ppm(x))


class PSPNet50(nn.Module):
    """Structure-optimised PSPNet50 (Sec. 6) at a kernel keep rate (Sec. 3.2)."""

    def __init__(self, k: PSPNet50Knobs, num_classes: int) -> None:
        super().__init__()
        r = k.keep_rate
        self.aux_weight = k.aux_weight
        self.backbone = ResNet50(FULL_UNITS, output_stride=k.output_stride, width=r, stem=k.stem)
        stage4, stage5 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        self.head = PyramidHead(stage5, scaled(HEAD_WIDTH, r))
        self.dropout = nn.Dropout2d(DROPOUT)
        self.classifier = nn.Conv2d(self.head.out_channels, num_classes, 1)
        self.aux = nn.Sequential(
            ConvBNReLU(stage4, scaled(AUX_WIDTH, r), 3),
            nn.Dropout2d(DROPOUT),
            nn.Conv2d(scaled(AUX_WIDTH, r), num_classes, 1),
        )
        load_backbone_weights("pspnet50", self.backbone, k.weights, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor | SegOutput:
        _, _, c4, c5 = self.backbone(x)
        assert c4 is not None and c5 is not None
        logits = self.classifier(self.dropout(self.head(c5)))
        if self.training:
            return SegOutput(logits, aux=[(self.aux_weight, self.aux(c4))])
        return upsample_to(logits, x.shape[-2:])


_WHERE = "(Cityscapes val; total time on one Titan X at 1024×2048, Sec. 6)"
# Table 1: mIoU (%) and time (ms) at downsample sizes 8, 16, 32 (keep rate 1); Table 2: at kernel keep rates 1, 0.5,
# 0.25 (downsample 8; its "1" column is Table 1's "8"). Tables 3 and 4 add the frame rate and memory of the model
# compressed by half, ICNet's baseline.
VARIANTS = (
    Variant(
        "os8",
        {"output_stride": 8, "keep_rate": 1.0},
        {"miou_pct": 71.7, "latency_ms": 446},
        f"Zhao et al. 2018, Table 1 column '8' = Table 2 column '1' {_WHERE}",
        "PSPNet50, downsample 8",
    ),
    Variant(
        "os16",
        {"output_stride": 16, "keep_rate": 1.0},
        {"miou_pct": 70.2, "latency_ms": 177},
        f"Zhao et al. 2018, Table 1 column '16' {_WHERE}",
        "PSPNet50, downsample 16",
    ),
    Variant(
        "os32",
        {"output_stride": 32, "keep_rate": 1.0},
        {"miou_pct": 67.1, "latency_ms": 131},
        f"Zhao et al. 2018, Table 1 column '32' {_WHERE}",
        "PSPNet50, downsample 32",
    ),
    Variant(
        "os8_keep050",
        {"output_stride": 8, "keep_rate": 0.5},
        {"miou_pct": 67.9, "latency_ms": 170, "fps": 5.9, "memory_gb": 9.2},
        f"Zhao et al. 2018, Table 2 column '0.5'; frame rate and memory: Tables 3 and 4 column 'Baseline' {_WHERE}",
        "PSPNet50 compressed by half",
    ),
    Variant(
        "os8_keep025",
        {"output_stride": 8, "keep_rate": 0.25},
        {"miou_pct": 59.4, "latency_ms": 72},
        f"Zhao et al. 2018, Table 2 column '0.25' {_WHERE}",
        "PSPNet50, keep 0.25",
    ),
)


@register(
    "pspnet50",
    knobs=PSPNet50Knobs,
    paper=PAPER,
    summary="PSPNet50 baseline of ICNet: dilated ResNet-50, summed pyramid pooling, 1×1 conv; kernel keep rate",
    prune_knob="keep_rate",
    variants=VARIANTS,
)
def pspnet50(k: PSPNet50Knobs, num_classes: int) -> nn.Module:
    return PSPNet50(k, num_classes)
