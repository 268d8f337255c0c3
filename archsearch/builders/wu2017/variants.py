"""The named variants of the Wu et al. (2017) builders: the rows of Tables 1–5 with the numbers the paper reports.

Each paper number is written here once; tests, studies and benchmarks read them with
``archsearch.builders.variant("sparse_two_column.model_a").paper["madds"]`` and ``archsearch builders`` prints them.

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

Costs against the paper (``archsearch.cost.count_madds(..., convention="wu2017")``: convolutions only, without the four
projection-shortcut 1×1 convolutions of each ResNet-50, which the paper's numbers evidently leave out; README,
"Cost counting"; ``tests/test_wu2017.py``): every multiply-add of Tables 1–5 within 0.6% at 1024×2048, e.g. Table 1
786.3g / 256.0g / 164.8g (paper 786 / 256 / 165), ISCTF 212.4g (212g), fast 8/32 102.8g (103g), Table 4 unremoved
77.1g (77.0g) and Model A 31.7g (31.5g), with 1-1-1-1 (31.5g) below Model A as in the paper.
"""

from __future__ import annotations

from archsearch.builders.registry import Variant
from archsearch.builders.resnet import FULL_UNITS
from archsearch.builders.wu2017.knobs import MODEL_A_FULL, MODEL_A_HALF


# -- named variants: the rows of Tables 1–5 (Cityscapes val; "Calc.": multiply-adds per forward pass at 1024×2048) --
def _acc(pixel: float, mean: float, miou: float) -> dict[str, float]:
    """Pixel accuracy, mean accuracy and mean IoU (%) of one row."""
    return {"pixel_acc_pct": pixel, "mean_acc_pct": mean, "miou_pct": miou}


def _source(where: str) -> str:
    return f"Wu et al. 2017, {where} (Cityscapes val; multiply-adds per forward pass at 1024×2048)"


def _computed(k: int, total: int) -> dict[str, float]:
    """Table 3 "Computed": regions the full-resolution column processes, of all regions."""
    return {"regions_computed": k, "regions_total": total}


_OS32 = {"madds": 165e9, **_acc(95.40, 81.64, 73.78)}
_ISCTF_P050_ACC = _acc(95.56, 83.76, 75.40)  # Table 2 ISCTF = Table 3 ISCTF p = 0.5, λ = 0.001 (fast)
_ISCTF_P025_ACC = _acc(95.35, 83.04, 74.74)  # Table 3 p = 0.25, λ = 0.001 = Table 5 "ISCTF (p = 0.25)"
_ISCTF_CLASSIC_MADDS = 212e9  # classic inference computes every region, whatever p (Tables 2 and 5)

SHARPMASK_VARIANTS = (
    Variant(
        "os8",
        {"output_stride": 8, "units": FULL_UNITS},
        {"madds": 786e9, **_acc(95.67, 82.61, 74.83)},
        _source("Table 1 row 1 = Table 5 row 'single-column model'"),
        "dilated stages 4–5; up 1/8→1/4",
    ),
    Variant(
        "os16",
        {"output_stride": 16, "units": FULL_UNITS},
        {"madds": 256e9, **_acc(95.56, 82.07, 74.21)},
        _source("Table 1 row 2"),
        "dilated stage 5; up 1/16→1/8→1/4",
    ),
    Variant(
        "os32",
        {"output_stride": 32, "units": FULL_UNITS},
        _OS32,
        _source("Table 1 row 3 (chosen)"),
        "no dilation; up 1/32→1/16→1/8→1/4 (chosen)",
    ),
)

# Tables 2 and 3: both columns keep every residual unit, plain head; Table 4: the optimized head, fast ISCTF with
# p = 0.25, λ = 0.001 and 256-pixel regions (Sec. 4.5); a row's knobs complete these.
_PLAIN = {"units_full": FULL_UNITS, "units_half": FULL_UNITS, "optimized_head": False}
_PAIR = {"columns": (0.5, 1.0)}
_SPARSE_P050 = {"sparsity": "kl", "p": 0.5, "lam": 0.001, "region_size": 256}
_TABLE4 = {
    **_PAIR,
    "fusion": "isctf",
    "sparsity": "kl",
    "p": 0.25,
    "lam": 0.001,
    "region_size": 256,
    "optimized_head": True,
    "inference": "fast",
}


def _t2(name: str, label: str, knobs: dict[str, object], paper: dict[str, float], where: int | str) -> Variant:
    where = f"Table 2 row {where}" if isinstance(where, int) else where
    return Variant(name, {**_PLAIN, "inference": "classic", **knobs}, paper, _source(where), label)


def _t3(name: str, label: str, knobs: dict[str, object], paper: dict[str, float], row: int) -> Variant:
    knobs = {**_PLAIN, **_PAIR, "fusion": "isctf", "sparsity": "kl", "region_size": 256, "inference": "fast", **knobs}
    where = f"Table 3 row {row}, fast inference" + ("; Table 5 row '+ fast inference'" if row == 7 else "")
    return Variant(name, knobs, paper, _source(where), label)


def _t4(
    name: str,
    label: str,
    full: tuple[int, ...],
    half: tuple[int, ...],
    paper: dict[str, float],
    row: int,
    **knobs: object,
) -> Variant:
    knobs = {**_TABLE4, "units_full": full, "units_half": half, **knobs}
    return Variant(
        name,
        knobs,
        paper,
        _source(
            f"Table 4 row {row}"
            + (
                "; Table 5 rows '+ structure optimizing', '+ online bootstrapping', '+ Cityscapes coarse set'"
                if row == 1
                else "; Table 5 row 'Model A' (with online bootstrapping and the coarse set)"
                if name == "model_a"
                else ""
            )
        ),
        label,
    )


TWO_COLUMN_VARIANTS = (
    _t2(
        "single_column",
        "single column (Table 1)",
        {"columns": (1.0,), "fusion": "max"},
        _OS32,
        "Table 1 row 3, the single column Table 2 compares with",
    ),
    _t2(
        "max",
        "max, 1/2× + full",
        {**_PAIR, "fusion": "max"},
        {"madds": 206e9, **_acc(95.64, 83.48, 75.34)},
        "Table 2 row 1 = Table 5 row 'max'",
    ),
    _t2(
        "max_quarter",
        "max, 1/4× + 1/2× + full",
        {"columns": (0.25, 0.5, 1.0), "fusion": "max"},
        {"madds": 216e9, **_acc(95.62, 82.57, 74.30)},
        2,
    ),
    _t2(
        "max_double",
        "max, full + 2×",
        {"columns": (1.0, 2.0), "fusion": "max"},
        {"madds": 824e9, **_acc(95.68, 82.84, 75.16)},
        3,
    ),
    _t2(
        "max_half_double",
        "max, 1/2× + full + 2×",
        {"columns": (0.5, 1.0, 2.0), "fusion": "max"},
        {"madds": 865e9, **_acc(95.65, 83.48, 75.21)},
        4,
    ),
    _t2("sum", "sum", {**_PAIR, "fusion": "sum"}, {"madds": 206e9, **_acc(95.59, 82.69, 75.20)}, 5),
    _t2(
        "attention",
        "attention-to-scale",
        {**_PAIR, "fusion": "attention"},
        {"madds": 206e9, **_acc(95.64, 82.62, 75.22)},
        6,
    ),
    _t2("ctf", "coarse-to-fine (CTF)", {**_PAIR, "fusion": "ctf"}, {"madds": 206e9, **_acc(95.68, 82.94, 75.14)}, 7),
    _t2(
        "sctf",
        "sparse coarse-to-fine (SCTF)",
        {**_PAIR, "fusion": "sctf", **_SPARSE_P050},
        {"madds": 206e9, **_acc(95.43, 82.37, 74.72)},
        "Table 2 row 8 = Table 5 row 'SCTF (p = 0.5)'",
    ),
    _t2(
        "isctf",
        "improved sparse coarse-to-fine (ISCTF)",
        {**_PAIR, "fusion": "isctf", **_SPARSE_P050},
        {"madds": _ISCTF_CLASSIC_MADDS, **_ISCTF_P050_ACC},
        9,
    ),
    Variant(
        "isctf_p025",
        {
            **_PLAIN,
            **_PAIR,
            "fusion": "isctf",
            "sparsity": "kl",
            "p": 0.25,
            "lam": 0.001,
            "region_size": 256,
            "inference": "classic",
        },
        {"madds": _ISCTF_CLASSIC_MADDS, **_ISCTF_P025_ACC},
        _source("Table 5 row 'ISCTF (p = 0.25)'"),
        "ISCTF, p=0.25, λ=0.001, classic inference",
    ),
    _t3(
        "sctf_fast_p050",
        "SCTF, sparse activations, p=0.5, λ=0.001 (16/32)",
        {"fusion": "sctf", "p": 0.5, "lam": 0.001},
        {"madds": 133e9, **_computed(16, 32), **_acc(95.08, 79.54, 71.74)},
        1,
    ),
    _t3(
        "isctf_wta_p025",
        "ISCTF, WTA, p=0.25 (8/32)",
        {"sparsity": "wta", "p": 0.25},
        {"madds": 103e9, **_computed(8, 32), **_acc(95.29, 80.88, 72.59)},
        2,
    ),
    _t3(
        "isctf_wta_p040",
        "ISCTF, WTA, p=0.4 (12/32)",
        {"sparsity": "wta", "p": 0.4},
        {"madds": 121e9, **_computed(12, 32), **_acc(95.33, 81.89, 73.57)},
        3,
    ),
    _t3(
        "isctf_wta_p050",
        "ISCTF, WTA, p=0.5 (16/32)",
        {"sparsity": "wta", "p": 0.5},
        {"madds": 139e9, **_computed(16, 32), **_acc(95.33, 82.30, 74.37)},
        4,
    ),
    _t3(
        "isctf_fast_p013",
        "ISCTF, p=0.13, λ=0.001 (4/32)",
        {"p": 0.13, "lam": 0.001},
        {"madds": 84.5e9, **_computed(4, 32), **_acc(95.06, 80.49, 72.26)},
        5,
    ),
    _t3(
        "isctf_fast_p020",
        "ISCTF, p=0.2, λ=0.001 (6/32)",
        {"p": 0.2, "lam": 0.001},
        {"madds": 93.7e9, **_computed(6, 32), **_acc(95.30, 81.54, 73.04)},
        6,
    ),
    _t3(
        "isctf_fast_p025",
        "ISCTF, p=0.25, λ=0.001 (8/32, chosen)",
        {"p": 0.25, "lam": 0.001},
        {"madds": 103e9, **_computed(8, 32), **_ISCTF_P025_ACC},
        7,
    ),
    _t3(
        "isctf_fast_p040",
        "ISCTF, p=0.4, λ=0.001 (12/32)",
        {"p": 0.4, "lam": 0.001},
        {"madds": 121e9, **_computed(12, 32), **_acc(95.42, 83.49, 75.16)},
        8,
    ),
    _t3(
        "isctf_fast_p050_lam1e4",
        "ISCTF, p=0.5, λ=0.0001 (16/32)",
        {"p": 0.5, "lam": 0.0001},
        {"madds": 139e9, **_computed(16, 32), **_acc(95.53, 83.33, 74.97)},
        9,
    ),
    _t3(
        "isctf_fast_p050_region128",
        "ISCTF, p=0.5, λ=0.001, 128-pixel regions (64/128)",
        {"p": 0.5, "lam": 0.001, "region_size": 128},
        {"madds": 139e9, **_computed(64, 128), **_acc(95.60, 83.37, 75.02)},
        10,
    ),
    _t3(
        "isctf_fast_p050",
        "ISCTF, p=0.5, λ=0.001 (16/32)",
        {"p": 0.5, "lam": 0.001},
        {"madds": 139e9, **_computed(16, 32), **_ISCTF_P050_ACC},
        11,
    ),
    _t3(
        "isctf_fast_p050_lam1e2",
        "ISCTF, p=0.5, λ=0.01 (16/32)",
        {"p": 0.5, "lam": 0.01},
        {"madds": 139e9, **_computed(16, 32), **_acc(95.54, 83.55, 75.19)},
        12,
    ),
    # Table 4: "+ online bs." and "+ coarse set" are the mean IoU after those trainings ("-" cells left out);
    # Table 5 adds their pixel and mean accuracies for the unremoved model and for Model A.
    _t4(
        "none_removed",
        "none removed: 3-4-6-3 / 3-4-6-3",
        FULL_UNITS,
        FULL_UNITS,
        {
            "madds": 77.0e9,
            **_acc(95.38, 82.71, 73.66),
            "miou_online_bs_pct": 74.40,
            "miou_coarse_pct": 74.61,
            "pixel_acc_online_bs_pct": 95.51,
            "mean_acc_online_bs_pct": 81.93,
            "pixel_acc_coarse_pct": 95.53,
            "mean_acc_coarse_pct": 83.50,
        },
        1,
    ),
    _t4(
        "units_1110_2341",
        "1-1-1-0 / 2-3-4-1",
        (1, 1, 1, 0),
        (2, 3, 4, 1),
        {"madds": 33.8e9, **_acc(94.89, 78.21, 69.93), "miou_online_bs_pct": 71.30, "miou_coarse_pct": 74.09},
        2,
    ),
    _t4(
        "units_1110_1252",
        "1-1-1-0 / 1-2-5-2",
        (1, 1, 1, 0),
        (1, 2, 5, 2),
        {"madds": 33.8e9, **_acc(94.72, 79.06, 70.35), "miou_online_bs_pct": 72.52, "miou_coarse_pct": 73.71},
        3,
    ),
    _t4(
        "model_a",
        "Model A: 1-1-2-0 / 1-2-4-1",
        MODEL_A_FULL,
        MODEL_A_HALF,
        {
            "madds": 31.5e9,
            **_acc(94.70, 77.90, 69.73),
            "miou_online_bs_pct": 70.65,
            "miou_coarse_pct": 74.31,
            "pixel_acc_coarse_pct": 95.46,
            "mean_acc_coarse_pct": 82.91,
        },
        4,
    ),
    _t4(
        "units_1111_1241",
        "1-1-1-1 / 1-2-4-1",
        (1, 1, 1, 1),
        (1, 2, 4, 1),
        {"madds": 31.3e9, **_acc(94.68, 77.72, 69.35)},
        5,
    ),
    _t4(
        "units_1110_1241",
        "1-1-1-0 / 1-2-4-1",
        (1, 1, 1, 0),
        (1, 2, 4, 1),
        {"madds": 29.3e9, **_acc(94.73, 77.82, 69.63), "miou_online_bs_pct": 71.34},
        6,
    ),
    _t4(
        "units_1110_1131",
        "1-1-1-0 / 1-1-3-1",
        (1, 1, 1, 0),
        (1, 1, 3, 1),
        {"madds": 24.7e9, **_acc(94.34, 74.59, 66.12), "miou_online_bs_pct": 68.53, "miou_coarse_pct": 73.20},
        7,
    ),
    _t4(
        "units_1110_1131_scratch",
        "1-1-1-0 / 1-1-3-1, from scratch",
        (1, 1, 1, 0),
        (1, 1, 3, 1),
        {"madds": 24.7e9, **_acc(93.87, 72.63, 63.54), "miou_online_bs_pct": 65.33, "miou_coarse_pct": 70.73},
        8,
        weights=None,
    ),
)
