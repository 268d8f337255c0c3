"""Knobs of the two Wu et al. (2017) builders (Table 1 single column; Sec. 3.2–3.5 multi-column), with the
cross-knob rules the registry checks at the spec/knob boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

from archsearch.builders.registry import Knobs, knob
from archsearch.builders.resnet import FULL_UNITS, stem_knob

MODEL_A_FULL = (1, 1, 2, 0)  # Table 4/5 "Model A: 1-1-2-0-1-2-4-1", the paper's final model
MODEL_A_HALF = (1, 2, 4, 1)
PAIRED = ("attention", "ctf", "sctf", "isctf")  # fusions of exactly the columns (0.5, 1.0)
SPARSE = ("sctf", "isctf")  # fusions with the sparse weight map (fast inference possible)


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


def _stem() -> str:
    return stem_knob("resnet", paper="ResNet-50 [10]: the 7×7 stride-2 stem (torchvision's)")


def _check_units(k: Knobs, name: str, units: tuple[int, ...]) -> None:
    bad = [i for i, (u, f) in enumerate(zip(units, FULL_UNITS, strict=True)) if not (0 <= u <= f)]
    if bad:
        k.fail(name, f"{list(units)}: stages 2–5 keep 1..{list(FULL_UNITS)} units (stage 5 may be 0)")
    if any(u == 0 for u in units[:3]):
        k.fail(name, f"{list(units)}: only stage 5 may be removed entirely (Sec. 4.5)")


@dataclass(frozen=True)
class SharpMaskKnobs(Knobs):
    """Table 1: single-column SharpMask-like FCN on ResNet-50; default the chosen third model (variant os32)."""

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
    stem: str = _stem()

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
    stem: str = _stem()

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
