"""Wu, Shen & van den Hengel (2017), "Real-time Semantic Image Segmentation via Spatial Sparsity".

Paper: ``../shared/papers/wu2017_spatial_sparsity_resnet50_unit_removal.txt``. Two builders:

- ``sharpmask_fcn`` — the single-column SharpMask-like FCN of Table 1 (output stride 8 | 16 | 32).
- ``sparse_two_column`` — columns at several input scales with the fusions of Fig. 3 and Sec. 3.4
  (max | sum | attention | ctf | sctf | isctf), spatial sparsity (Sec. 3.3), fast inference (Fig. 1),
  the optimized head (Sec. 3.4) and residual unit removal per column (Sec. 3.5, Table 4).

Modules: ``wu2017_column`` (ResNet-50 with unit removal + SharpMask-like head), ``wu2017_sparsity`` (regions,
sparse weight, penalty, crop/uncrop), ``wu2017_two_column`` (fusion, classic and fast inference).

Details the paper leaves open, and the simplest faithful reading taken here:

- Backbone: ResNet-50 [10] with the stride of stages 3–5 on the first 1×1 convolution (``stride_in_1x1``),
  which reproduces the paper's 165g for the third model of Table 1; torchvision-layout weights load unchanged.
- Hidden 3×3 layers sit at every level from the backbone's output stride down to 1/8, each with dilation
  ``96/stride`` (receptive field 193 ≈ 200 px: 3, 6, 12 at 1/32, 1/16, 1/8); jump connections are 1×1 layers
  on the raw stage features, summed with the up-sampled (bilinear) coarser map; the first model's classifier is
  an undilated 3×3.
- The columns have their own weights. Scale-aware weights (attention / coarse-to-fine) and the sparse weight come
  from the half column's last map (1/8 of the image; τ = region_size/8); the attention model is one 1×1 layer
  on both columns' last maps. Cross-column connections are 3×3 layers: the text leaves their kernel open, and
  ISCTF costs 6g more than SCTF (Table 2: 212g vs 206g; Table 5: +2.9%; Table 3: 139g vs 133g at 16/32), which
  3×3 layers on the half column's 128-channel maps give (+6.3g) and 1×1 layers do not (+0.7g).
- Uncrop (Fig. 4: "we 'uncrop' the extracted features and in-column connections"): only the full column's
  backbone runs per region; its raw features are uncropped and the whole head, the 1×1 jump layers (in-column
  connections) included, runs on the re-assembled map. Fast inference therefore skips only the backbone of the
  skipped regions: Table 3's costs rise by 4.54g per region (1/32 of the backbone) from a constant 66.3g; this
  build gives 4.57g and 66.3g, whereas jump layers run per crop would put the fast rows 3–14% below the paper's.
- Training: every region of the full column is computed; the weight map is ``sigmoid(s)`` (kl) or
  ``sigmoid(s)`` on the top-k regions (wta). Evaluation quantizes ``s`` to the top ``k = ⌊p·H·W⌋`` regions (Table 3
  lists p = 0.4 as 12/32, the floor). ``q`` starts at ``p``; the extra per-column losses weigh ``aux_weight``.

Costs against the paper (``measure.count_madds(..., convention="wu2017")``: convolutions only, without the four
projection-shortcut 1×1 convolutions of each ResNet-50, which the paper's numbers evidently leave out; README,
"Cost counting"; ``tests/test_wu2017.py``): every multiply-add of Tables 1–5 within 0.6% at 1024×2048, e.g. Table 1
786.3g / 256.0g / 164.8g (paper 786 / 256 / 165), ISCTF 212.4g (212g), fast 8/32 102.8g (103g), Table 4 unremoved
77.1g (77.0g) and Model A 31.7g (31.5g), with 1-1-1-1 (31.5g) below Model A as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from archsearch.builders.registry import Knobs, knob, register
from archsearch.builders.resnet import FULL_UNITS
from archsearch.builders.wu2017_column import Column
from archsearch.builders.wu2017_two_column import PAIRED, SPARSE, TwoColumnFCN

PAPER = "wu2017_spatial_sparsity_resnet50_unit_removal"
MODEL_A_FULL = (1, 1, 2, 0)  # Table 4/5 "Model A: 1-1-2-0-1-2-4-1", the paper's final model
MODEL_A_HALF = (1, 2, 4, 1)


def _units(default: tuple[int, ...], paper: str, doc: str) -> tuple[int, ...]:
    return knob(default, paper=paper, doc=doc, length=4, item_low=0, item_high=6)


def _stride_in_1x1() -> bool:
    return knob(
        True,
        paper="ResNet-50 [10] (He et al.: stride-2 first 1×1 in stages 3–5)",
        doc="True: the paper's ResNet-50; False: torchvision's (stride on the 3×3)",
        choices=(True, False),
    )


def _weights() -> str | None:
    return knob(
        None, paper="ImageNet pre-trained ResNet-50 (Sec. 4.5)", doc="local torchvision-layout ResNet-50 state dict"
    )


def _check_units(k: Knobs, name: str, units: tuple[int, ...]) -> None:
    bad = [i for i, (u, f) in enumerate(zip(units, FULL_UNITS, strict=True)) if not (0 <= u <= f)]
    if bad:
        k.fail(name, f"{list(units)}: stages 2–5 keep 1..{list(FULL_UNITS)} units (stage 5 may be 0)")
    if any(u == 0 for u in units[:3]):
        k.fail(name, f"{list(units)}: only stage 5 may be removed entirely (Sec. 4.5)")


@dataclass(frozen=True)
class SharpMaskKnobs(Knobs):
    """Table 1: single-column SharpMask-like FCN on ResNet-50; default the chosen third model (165g)."""

    output_stride: int = knob(
        32,
        paper="Table 1 'increasing dilations' (8: stages 4–5, 16: stage 5, 32: none)",
        doc="dilation instead of down-sampling in stage 5 (16) or stages 4 and 5 (8); jump connections up to 1/4",
        choices=(8, 16, 32),
    )
    units: tuple[int, ...] = _units(
        FULL_UNITS, "residual units kept per stage 2–5 (Sec. 3.5)", "kept bottleneck units in stages 2–5"
    )
    stride_in_1x1: bool = _stride_in_1x1()
    weights: str | None = _weights()

    def check(self) -> None:
        _check_units(self, "units", self.units)
        if self.units[3] == 0 and self.output_stride != 32:
            self.fail("units", "stage 5 can be removed only at output_stride 32")


@dataclass(frozen=True)
class TwoColumnKnobs(Knobs):
    """Sec. 3.2–3.5; defaults are the paper's final model: Model A, ISCTF, p = 0.25, λ = 0.001, 256, fast."""

    columns: tuple[float, ...] = knob(
        (0.5, 1.0),
        paper="input resolutions 1/4×, 1/2×, full, 2× (Table 2)",
        doc="input scales of the columns (a subset, ascending); attention/ctf/sctf/isctf need (0.5, 1)",
        length=(1, 4),
        item_choices=(0.25, 0.5, 1.0, 2.0),
    )
    fusion: str = knob(
        "isctf",
        paper="fusion approach (Fig. 3, Sec. 3.4, Table 2)",
        doc="max | sum | attention-to-scale | coarse-to-fine | sparse CTF | improved sparse CTF",
        choices=("max", "sum", "attention", "ctf", "sctf", "isctf"),
    )
    units_full: tuple[int, ...] = _units(
        MODEL_A_FULL, "1× column units (Table 4; Model A 1-1-2-0)", "kept units in stages 2–5 of columns at scale ≥ 1"
    )
    units_half: tuple[int, ...] = _units(
        MODEL_A_HALF, "1/2× column units (Table 4; Model A 1-2-4-1)", "kept units in stages 2–5 of columns at scale < 1"
    )
    optimized_head: bool = knob(
        True,
        paper="structure optimizing (Sec. 3.4, Table 5)",
        doc="128/64/32 kernels, 8 groups on raw features, 8/4/2 in the jumps, 1×1 top in the full column",
        choices=(True, False),
    )
    region_size: int = knob(
        256,
        paper="region size (Table 3; 256 → 4×8 regions at 1024×2048)",
        doc="side of the square regions in input pixels at an input region_reference high (a multiple of 32)",
        low=32,
        high=1024,
    )
    region_reference: int = knob(
        1024,
        paper="the input height of Table 3's region sizes (Cityscapes, 1024×2048)",
        doc="input height at which region_size holds; at another height the regions scale with the input (to a "
        "multiple of 32 pixels, at least 32), so a proxy at scale 0.25 keeps the paper's 4×8 grid",
        low=32,
        high=8192,
    )
    sparsity: str = knob(
        "kl",
        paper="approach to sparsity (Table 3: sparse activations | winner-take-all)",
        doc="kl: Eq. 1 penalty on sigmoid(s); wta: keep the top-k regions, no penalty",
        choices=("kl", "wta"),
    )
    p: float = knob(
        0.25, paper="p (target active probability)", doc="target fraction of computed regions", low=0.01, high=1.0
    )
    lam: float = knob(0.001, paper="λ", doc="weight of the sparsity penalty (Eq. 1)", low=0.0, high=10.0)
    alpha: float = knob(0.9, paper="α (momentum of q, Eq. 2)", doc="moving-average momentum of q", low=0.0, high=0.999)
    estimate: str = knob(
        "image",
        paper="r: Eq. 4 (per image) | Eq. 3 (per location)",
        doc="how the current batch's active probability r is averaged",
        choices=("image", "location"),
    )
    inference: str = knob(
        "fast",
        paper="classic | fast inference (Fig. 1, Sec. 3.4, Table 3)",
        doc="fast computes the full-resolution column only on the top-k region crops",
        choices=("classic", "fast"),
    )
    aux_weight: float = knob(
        1.0,
        paper="extra Softmax losses (Fig. 4, Chen et al. [4])",
        doc="weight of each column's own loss",
        low=0.0,
        high=10.0,
    )
    stride_in_1x1: bool = _stride_in_1x1()
    weights: str | None = _weights()

    def check(self) -> None:
        _check_units(self, "units_full", self.units_full)
        _check_units(self, "units_half", self.units_half)
        cols = self.columns
        if list(cols) != sorted(set(cols)):
            self.fail("columns", f"{list(cols)}: distinct scales in ascending order")
        if self.fusion in PAIRED and cols != (0.5, 1.0):
            self.fail("fusion", f"{self.fusion!r} fuses exactly the columns [0.5, 1.0]; got {list(cols)}")
        if self.inference == "fast" and self.fusion not in SPARSE:
            self.fail("inference", f"fast inference needs a sparse fusion (sctf, isctf); fusion is {self.fusion!r}")
        if self.region_size % 32:
            self.fail("region_size", f"{self.region_size} is not a multiple of 32")


@register(
    "sharpmask_fcn",
    knobs=SharpMaskKnobs,
    paper=PAPER,
    summary="Wu 2017 Table 1: SharpMask-like ResNet-50 FCN (logits at 1/4)",
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
        )
        if k.weights:
            self.column.load_backbone(k.weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.column(images)[0]


@register(
    "sparse_two_column",
    knobs=TwoColumnKnobs,
    paper=PAPER,
    summary="Wu 2017: multi-column ResNet-50 FCN, CTF fusion, spatial sparsity, fast inference, unit removal",
)
def sparse_two_column(k: TwoColumnKnobs, num_classes: int) -> nn.Module:
    model = TwoColumnFCN(k, num_classes)
    if k.weights:
        for col in model.columns:
            col.load_backbone(k.weights)  # type: ignore[operator]
    return model
