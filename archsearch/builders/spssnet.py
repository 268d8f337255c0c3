"""Fast-SCNN with stage-pooling or stream-pooling — SPSSNet (Mamoon et al., FITEE 2020).

Paper: S. Mamoon, M. A. Manzoor, F. Zhang, Z. Ali, J. Lu, "SPSSNet: a real-time network for image semantic
segmentation", Frontiers of Information Technology & Electronic Engineering (FITEE), 2020,
doi:10.1631/FITEE.1900697; the base network is Fast-SCNN (Poudel et al., 2019, arXiv:1902.04502), which the
paper keeps (Sec. 4). One builder, ``fast_scnn``, with the knob ``pooling``:

- ``none`` — Fast-SCNN: learning to down-sample (Conv2D 32, DSConv 48, DSConv 64; 1/8), deep branch of three
  bottleneck units of three MobileNetV2 inverted residuals each (64, 96, 128 channels, strides 2, 2, 1 —
  SPSSN Table 1, so 1/16, 1/32, 1/32), pyramid pooling (bins 1, 2, 3, 6), feature fusion (deep branch up-sampled
  to 1/8, 3×3 depth-wise conv with dilation 4 + BN + ReLU, 1×1 conv + BN; shallow branch 1×1 conv + BN; sum,
  ReLU), classifier (two DSConv, 1×1 conv to the classes). Logits at 1/8.
- ``stage`` — SPSSN (Sec. 4.3, Fig. 1, Fig. 2): four stage-pooling modules take the learning-to-down-sample
  output and the output of each bottleneck unit (Table 1: 64, 64, 96, 128 channels at 1/8, 1/16, 1/32, 1/32).
  Each is a pointwise convolution to the shared width (128), the CRP-LW pooling module (chained 5×5 stride-1
  max-pool → 1×1 conv pairs, each conv output summed into the residual, Fig. 2b), then bilinear up-sampling to
  1/8 — pooling *before* up-sampling, so each module pools at its own resolution. Every module's output is
  added into the shallow branch.
- ``stream`` — the ablation of Sec. 6, Fig. 5: each stream-pooling module adds the previous module's output to
  the projected (pointwise), up-sampled bottleneck output and then pools, so every module pools at 1/8; only
  the last module's output is added into the shallow branch.

Named variants (``VARIANTS``): ``fast_scnn.base``, ``fast_scnn.stream``, ``fast_scnn.spssn`` — the rows of
Table 6 with the paper's numbers. Open details settled with their parameter counts (19 classes;
``tests/test_spssnet.py``):

- *CRP depth.* Sec. 4.3 describes CRP-LW as "two 5×5 maxpool operations and two pointwise 1×1 convolutions"
  (Fig. 2b), but in Table 6 stage-pooling adds 0.31M parameters to Fast-SCNN (``spssn`` − ``base``). Four
  pool–conv pairs — the depth of Nekrasov et al.'s released CRP-LW (``_make_crp(..., 4)``) — add 308,224; two
  add 177,152 and three 242,688. With two pairs SPSSN has 1,314,947 parameters (−7.4% of ``spssn``'s, outside
  5%), so ``crp_depth`` defaults to 4 (1,446,019, +1.8%); Fig. 2b's two pairs are one knob value away.
- *Stream-pooling's extra convolutions.* Sec. 6: stage-pooling "used fewer convolution layers than the
  stream-pooling module", and Table 6 has ``stream`` 0.05M larger. As in RefineNet-LW, where a CRP output passes a
  1×1 "adapt" convolution before joining the next level, every stream module but the last passes its output
  through a 1×1 convolution (width→width, no BN) before it is added to the next module's input: 3 × 128² =
  49,152 parameters, Table 6's +0.05M. Stream: 1,495,171 (+1.7% of ``stream``'s).
- *Fast-SCNN itself.* ReLU (not ReLU6) in the bottlenecks; BN after every convolution except the classifier's
  last (which has a bias) and CRP-LW's (none, as in Nekrasov et al.); the pooling modules' pointwise
  projections are conv + BN + ReLU; PPM branch convs to in/4 with BN + ReLU, a 1×1 output conv from 2·in to 128
  with BN + ReLU; no dropout. Fast-SCNN: 1,137,795 (+2.5% of ``base``'s).
- *Widths other than the paper's.* With ``width`` ≠ ``shallow_width`` a 1×1 conv + BN maps each fused pooling
  output to the shallow branch's width (stage: per module, before up-sampling; stream: after the last module);
  at the paper's 128/128 there is none.

Multiply-adds at 1024×2048 (fvcore): none 6.95G, stage 10.36G, stream 17.60G — stream pools every module at
1/8, so its CRP convolutions cost 4–16× those of stage-pooling (``benchmarks/stage_pooling.py``).

Output: logits ``(N, C, H/8, W/8)`` in both modes (the paper has no auxiliary losses); callers up-sample.
Inputs of any size work: every fusion up-samples to the shallow branch's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.builders.layers import ConvBNReLU, DSConv, upsample_to
from archsearch.builders.registry import Knobs, Variant, knob, register

PAPER = "mamoon2020_spssnet_stage_pooling"

LTD_WIDTHS = (32, 48, 64)  # learning to down-sample: Conv2D 32, DSConv 48, DSConv 64 (Table 1)
DEEP_WIDTHS = (64, 96, 128)  # bottleneck units' output widths (Table 1)
BLOCKS_PER_UNIT = 3  # "each bottleneck unit is composed of three bottleneck residual blocks" (Sec. 4.2)
PPM_BINS = (1, 2, 3, 6)  # pyramid pooling bins (Zhao et al. 2017; Fast-SCNN)
PPM_OUT = 128  # SPP output width (Table 1)
FFM_DILATION = 4  # Fast-SCNN Table 2: depth-wise conv of the up-sampled deep branch, dilation = up-sampling ×4
POOLING_MODES = ("none", "stage", "stream")


@dataclass(frozen=True)
class FastSCNNKnobs(Knobs):
    """Fast-SCNN / SPSSN knobs; defaults are SPSSN (stage-pooling), the paper's proposed network (Table 1)."""

    pooling: str = knob(
        "stage",
        paper="stage-pooling vs stream-pooling (Sec. 4.3, Sec. 6, Table 6)",
        doc="none: Fast-SCNN; stage: SPSSN stage-pooling (Fig. 2); stream: chained stream-pooling (Fig. 5)",
        choices=POOLING_MODES,
    )
    modules: tuple[int, ...] = knob(
        (1, 2, 3, 4),
        paper="stage-pooling modules 1–4 (Fig. 1, Table 1)",
        doc="pooling modules present: 1 reads the learning-to-down-sample output, 2–4 bottleneck units 1–3",
        length=(1, 4),
        item_choices=(1, 2, 3, 4),
    )
    crp_depth: int = knob(
        4,
        paper="CRP-LW pool–conv pairs (Sec. 4.3, Fig. 2b; Nekrasov et al. 2018)",
        doc="chained 5×5 max-pool + 1×1 conv pairs in each pooling module (Fig. 2b draws 2; Table 6 counts fit 4)",
        low=1,
        high=6,
    )
    width: int = knob(
        128,
        paper="stage-pooling channel dimension, 128 (Sec. 4.3)",
        doc="width of every pooling module (projection, CRP-LW); ≠ shallow_width adds a 1×1 conv + BN to fuse",
        low=8,
        high=512,
    )
    expansion: int = knob(
        6,
        paper="bottleneck expansion factor t (Fast-SCNN Table 1; MobileNetV2)",
        doc="inverted-residual expansion: the depth-wise conv runs at t·input channels",
        low=1,
        high=8,
    )
    shallow_width: int = knob(
        128,
        paper="shallow branch / FFM width, 128 (Sec. 4.4, Table 1)",
        doc="width of the shallow branch, the feature fusion output and the classifier's DSConvs",
        low=8,
        high=512,
    )
    strides: tuple[int, ...] = knob(
        (2, 2, 1),
        paper="bottleneck unit strides (Table 1; CamVid: no down-sampling in unit 1, Sec. 5.2)",
        doc="stride of the first block of bottleneck units 1–3",
        length=3,
        item_choices=(1, 2),
    )

    def check(self) -> None:
        if len(set(self.modules)) != len(self.modules) or list(self.modules) != sorted(self.modules):
            self.fail("modules", f"{list(self.modules)!r}: module numbers must be distinct and increasing, from 1..4")


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck as in Fast-SCNN: 1×1 expand (t) + BN + ReLU, 3×3 depth-wise (stride) + BN + ReLU,
    1×1 linear projection + BN; identity shortcut when the stride is 1 and the width is unchanged."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, t: int) -> None:
        super().__init__()
        mid = in_ch * t
        self.block = nn.Sequential(
            ConvBNReLU(in_ch, mid, 1),
            ConvBNReLU(mid, mid, 3, stride, groups=mid),
            ConvBNReLU(mid, out_ch, 1, relu=False),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def bottleneck_unit(in_ch: int, out_ch: int, stride: int, t: int, n: int = BLOCKS_PER_UNIT) -> nn.Sequential:
    """``n`` inverted residuals; the first changes the width and carries the stride (Table 1)."""
    return nn.Sequential(
        *(InvertedResidual(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1, t) for i in range(n))
    )


class PyramidPooling(nn.Module):
    """PPM (Zhao et al. 2017, as in Fast-SCNN): adaptive average pools, 1×1 convs to in/4, up-sampling,
    concatenation with the input, 1×1 conv to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, bins: tuple[int, ...] = PPM_BINS) -> None:
        super().__init__()
        self.bins = bins
        self.branches = nn.ModuleList(ConvBNReLU(in_ch, in_ch // 4, 1) for _ in bins)
        self.out = ConvBNReLU(in_ch + len(bins) * (in_ch // 4), out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [conv(F.adaptive_avg_pool2d(x, b)) for b, conv in zip(self.bins, self.branches, strict=False)]
        feats = [x] + [upsample_to(p, size) for p in pooled]
        return self.out(torch.cat(feats, dim=1))


class CRPLW(nn.Module):
    """Light-weight chained residual pooling (Nekrasov et al. 2018; SPSSN Fig. 2b): ``depth`` pairs of 5×5
    stride-1 max-pool and 1×1 convolution, chained; each pair's output is summed into the residual path."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 1, bias=False) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, top = x, x
        for conv in self.convs:
            top = conv(self.pool(top))
            out = out + top
        return out


class StagePooling(nn.Module):
    """Stage-pooling module (Fig. 2a): pointwise conv to the shared width, CRP-LW, bilinear up-sampling to 1/8.

    With ``fuse_ch`` different from ``width`` a 1×1 conv + BN maps the pooled features to the shallow branch's
    width (before up-sampling; absent at the paper's widths).
    """

    def __init__(self, in_ch: int, width: int, depth: int, fuse_ch: int) -> None:
        super().__init__()
        self.project = ConvBNReLU(in_ch, width, 1)
        self.crp = CRPLW(width, depth)
        self.fuse: nn.Module = nn.Identity() if fuse_ch == width else ConvBNReLU(width, fuse_ch, 1, relu=False)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return upsample_to(self.fuse(self.crp(self.project(x))), size)


class StreamPooling(nn.Module):
    """Stream-pooling module (Fig. 5): the projected, up-sampled stage output plus the previous module's output
    (after a 1×1 adapt convolution, as in RefineNet-LW), then CRP-LW at 1/8."""

    def __init__(self, in_ch: int, width: int, depth: int, has_previous: bool) -> None:
        super().__init__()
        self.project = ConvBNReLU(in_ch, width, 1)
        self.adapt: nn.Module | None = nn.Conv2d(width, width, 1, bias=False) if has_previous else None
        self.crp = CRPLW(width, depth)

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None, size: torch.Size) -> torch.Tensor:
        y = upsample_to(self.project(x), size)
        if self.adapt is not None and previous is not None:
            y = F.relu(y + self.adapt(previous))
        return self.crp(y)


class FeatureFusion(nn.Module):
    """Fast-SCNN FFM: deep branch up-sampled to 1/8, 3×3 depth-wise (dilation 4) + BN + ReLU, 1×1 conv + BN;
    shallow branch (already projected) summed; ReLU."""

    def __init__(self, deep_ch: int, out_ch: int) -> None:
        super().__init__()
        self.dw = ConvBNReLU(deep_ch, deep_ch, 3, dilation=FFM_DILATION, groups=deep_ch)
        self.pw = ConvBNReLU(deep_ch, out_ch, 1, relu=False)

    def forward(self, shallow: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        return F.relu(shallow + self.pw(self.dw(upsample_to(deep, shallow.shape[-2:]))))


class FastSCNN(nn.Module):
    """Fast-SCNN (``pooling='none'``) and SPSSN with stage- or stream-pooling."""

    def __init__(self, k: FastSCNNKnobs, num_classes: int) -> None:
        super().__init__()
        self.pooling = k.pooling
        c1, c2, c3 = LTD_WIDTHS
        self.downsample = nn.Sequential(ConvBNReLU(3, c1, 3, 2), DSConv(c1, c2, 2), DSConv(c2, c3, 2))
        units, in_ch = [], c3
        for out_ch, stride in zip(DEEP_WIDTHS, k.strides, strict=False):
            units.append(bottleneck_unit(in_ch, out_ch, stride, k.expansion))
            in_ch = out_ch
        self.units = nn.ModuleList(units)
        self.ppm = PyramidPooling(in_ch, PPM_OUT)
        self.shallow = ConvBNReLU(c3, k.shallow_width, 1, relu=False)
        self.ffm = FeatureFusion(PPM_OUT, k.shallow_width)
        self.classifier = nn.Sequential(
            DSConv(k.shallow_width, k.shallow_width),
            DSConv(k.shallow_width, k.shallow_width),
            nn.Conv2d(k.shallow_width, num_classes, 1),
        )
        # Pooling modules, keyed by the stage they read: "1" = learning to down-sample, "2".."4" = units 1..3.
        stage_in = (c3, *DEEP_WIDTHS)
        self.modules_present = tuple(k.modules) if k.pooling != "none" else ()
        self.pools = nn.ModuleDict()
        if k.pooling == "stage":
            for m in self.modules_present:
                self.pools[str(m)] = StagePooling(stage_in[m - 1], k.width, k.crp_depth, k.shallow_width)
        elif k.pooling == "stream":
            for i, m in enumerate(self.modules_present):
                self.pools[str(m)] = StreamPooling(stage_in[m - 1], k.width, k.crp_depth, has_previous=i > 0)
            self.stream_fuse: nn.Module = (
                nn.Identity() if k.width == k.shallow_width else ConvBNReLU(k.width, k.shallow_width, 1, relu=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        size = x.shape[-2:]
        shallow = self.shallow(x)
        stream: torch.Tensor | None = None
        stages = [x]
        deep = x
        for unit in self.units:
            deep = unit(deep)
            stages.append(deep)
        for m in self.modules_present:
            pool, feat = self.pools[str(m)], stages[m - 1]
            if self.pooling == "stage":
                shallow = shallow + pool(feat, size)
            else:
                stream = pool(feat, stream, size)
        if stream is not None:
            shallow = shallow + self.stream_fuse(stream)
        fused = self.ffm(shallow, self.ppm(deep))
        return self.classifier(fused)


_TABLE6 = "Mamoon et al. 2020, Table 6 row '{}' (Cityscapes val: class and category mIoU, parameters)"
_TABLE3 = "; time and FPS: Table 3 row '{}', one TITAN Xp (Sec. 5.3) at 2048×1024"
# Table 6: class mIoU (%), category mIoU (%), parameters (×10^6; "–" cells left out); Table 3: time (ms), FPS —
# the paper gives no time for stream-pooling.
VARIANTS = (
    Variant(
        "base",
        {"pooling": "none"},
        {"params": 1.11e6, "miou_pct": 68.62, "latency_ms": 9.4, "fps": 106.2},
        _TABLE6.format("Fast-SCNN") + _TABLE3.format("Fast-SCNN (Poudel et al., 2019)"),
        "Fast-SCNN",
    ),
    Variant(
        "stream",
        {"pooling": "stream"},
        {"params": 1.47e6, "miou_pct": 69.70, "category_miou_pct": 85.6},
        _TABLE6.format("Stream-pooling"),
        "Stream-pooling",
    ),
    Variant(
        "spssn",
        {"pooling": "stage"},
        {"params": 1.42e6, "miou_pct": 70.40, "category_miou_pct": 86.4, "latency_ms": 16.0, "fps": 59.0},
        _TABLE6.format("Stage-pooling") + _TABLE3.format("SPSSN (Ours)"),
        "Stage-pooling (SPSSN)",
    ),
)


@register(
    "fast_scnn",
    knobs=FastSCNNKnobs,
    paper=PAPER,
    summary="Fast-SCNN with SPSSN stage-pooling or stream-pooling (CRP-LW), logits at 1/8",
    variants=VARIANTS,
)
def fast_scnn(k: FastSCNNKnobs, num_classes: int) -> nn.Module:
    return FastSCNN(k, num_classes)
