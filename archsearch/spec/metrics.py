"""The trial record: every metric a trial stores, defined once.

A trial stores each metric as an Optuna user attribute of the same name (DESIGN.md's trial record). This module
is the one definition of them: the spec takes the allowed ``objectives:`` and ``constraints:`` from it, the
trial computes its objective values through it, and reports read names, units and scales here.

``scale`` converts the stored value into ``unit``: ``miou`` is stored as a fraction and shown in % (scale 100),
``madds`` as a count and shown in G (scale 1e-9). A metric that can be a constraint is known before training
(from building and timing the network), so a constraint on it gates a trial before it trains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One stored number of a trial."""

    name: str  # the user attribute (and objective) name
    unit: str  # unit of the shown value ("" for a plain count or ratio)
    doc: str  # what it is, one sentence
    objective: bool  # may be listed in the spec's objectives:
    constraint: bool  # known before training: may be a constraint (the gate) in the spec's constraints:
    scale: float = 1.0  # stored value × scale = value in `unit`
    label: str = ""  # short human name for axes and tables (default: the name)

    @property
    def column(self) -> str:
        """The table column of the shown value: ``miou_pct``, ``madds_G``, ``latency_ms``, ``params``."""
        suffix = {"%": "_pct", "G": "_G"}.get(self.unit, "")
        return self.name + suffix

    @property
    def axis_label(self) -> str:
        """``mIoU (%)``, ``latency (ms)``, ``multiply-adds (G)``; the label alone when there is no unit."""
        label = self.label or self.name
        return f"{label} ({self.unit})" if self.unit else label

    def shown(self, value: float) -> float:
        """The stored value in :attr:`unit`."""
        return float(value) * self.scale


METRICS: tuple[Metric, ...] = (
    Metric(
        "miou",
        "%",
        "mean intersection over union on the validation split, a fraction",
        objective=True,
        constraint=False,
        scale=100.0,
        label="mIoU",
    ),
    Metric(
        "pixel_acc",
        "%",
        "pixel accuracy on the validation split, a fraction",
        objective=True,
        constraint=False,
        scale=100.0,
        label="pixel accuracy",
    ),
    Metric(
        "mean_acc",
        "%",
        "mean per-class accuracy on the validation split, a fraction",
        objective=True,
        constraint=False,
        scale=100.0,
        label="mean accuracy",
    ),
    Metric(
        "iou_per_class",
        "%",
        "intersection over union of each class (a list; null for a class never seen)",
        objective=False,
        constraint=False,
        scale=100.0,
        label="IoU per class",
    ),
    Metric(
        "latency_ms",
        "ms",
        "median latency of one forward pass at the target input on the target device",
        objective=True,
        constraint=True,
        label="latency",
    ),
    Metric(
        "latency_p90_ms",
        "ms",
        "90th percentile of the same latency repeats",
        objective=True,
        constraint=True,
        label="latency p90",
    ),
    Metric("params", "", "number of parameters", objective=True, constraint=True, label="parameters"),
    Metric(
        "madds",
        "G",
        "multiply-adds at the target input (multiply-accumulates, as the papers count them)",
        objective=True,
        constraint=True,
        scale=1e-9,
        label="multiply-adds",
    ),
    Metric(
        "flops",
        "G",
        "fvcore's total at the target input (batch norm and up-sampling included)",
        objective=True,
        constraint=True,
        scale=1e-9,
        label="FLOPs",
    ),
    Metric(
        "train_seconds",
        "s",
        "wall-clock seconds of the proxy training (pruning steps included)",
        objective=True,
        constraint=False,
        label="training time",
    ),
    Metric(
        "final_loss",
        "",
        "training loss at the last proxy iteration (without pruning)",
        objective=False,
        constraint=False,
        label="final loss",
    ),
    Metric(
        "images_per_s",
        "images/s",
        "proxy training throughput (without pruning)",
        objective=False,
        constraint=False,
        label="training throughput",
    ),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def get(name: str) -> Metric:
    """The metric named ``name`` (KeyError naming the known ones otherwise)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a trial metric; known: {', '.join(BY_NAME)}") from None


def objective_names() -> tuple[str, ...]:
    """Metrics a spec may list under ``objectives:``."""
    return tuple(m.name for m in METRICS if m.objective)


def constraint_names() -> tuple[str, ...]:
    """Metrics a spec may constrain (known before training, so the constraint gates the trial)."""
    return tuple(m.name for m in METRICS if m.constraint)


def fraction_names() -> tuple[str, ...]:
    """Scalar metrics stored as fractions and shown in % (``miou``, ``pixel_acc``, ``mean_acc``)."""
    return tuple(m.name for m in METRICS if m.unit == "%" and m.name != "iou_per_class")


#: Zero-cost scores every trial records at initialisation, as user attributes ``zc_<name>`` (higher: better
#: predicted accuracy; :mod:`archsearch.training.zerocost`), and the two free ones it has anyway (``params``,
#: ``madds``). ``search.fidelity.zero_cost`` and ``calibrate --fidelities zc:NAME`` take any of both.
ZERO_COST_SCORES = ("naswot", "jacob_cov", "grad_norm", "snip", "synflow", "zico")
ZERO_COST_FREE = ("params", "madds")
ZERO_COST = (*ZERO_COST_SCORES, *ZERO_COST_FREE)


def zero_cost_attribute(name: str) -> str:
    """The trial user attribute of zero-cost score ``name``: ``zc_<name>``, or ``params`` / ``madds``."""
    if name not in ZERO_COST:
        raise KeyError(f"{name!r} is not a zero-cost score; allowed: {', '.join(ZERO_COST)}")
    return name if name in ZERO_COST_FREE else f"zc_{name}"


class MissingMetric(Exception):
    """A trial did not record a metric its spec asks for."""


def objective_values(values: Mapping[str, Any], names: Iterable[str]) -> tuple[float, ...]:
    """The objective values, in the spec's order, from the trial's recorded ``values``."""
    out = []
    for name in names:
        if name not in values or values[name] is None:
            raise MissingMetric(f"objective {name!r}: this trial recorded no {name} ({get(name).doc})")
        out.append(float(values[name]))
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Added for the reports (branch report9): the other numbers a trial stores, the one reports derive, and what the
# reports' short tables show. Kept apart from the block above so that the branches using this file merge easily.

METRICS = (
    *METRICS,
    Metric(
        "miou_std",
        "%",
        "sample standard deviation of the mIoU over the training seeds (null for one seed)",
        objective=False,
        constraint=False,
        scale=100.0,
        label="mIoU std",
    ),
    Metric(
        "latency_half_width_ms",
        "ms",
        "half-width of the 95% confidence interval of the median latency",
        objective=False,
        constraint=False,
        label="latency ±",
    ),
    Metric(
        "latency_repeats",
        "",
        "number of timed forward passes behind the latency",
        objective=False,
        constraint=False,
        label="latency repeats",
    ),
)
BY_NAME = {m.name: m for m in METRICS}

#: numbers reports compute from the stored ones (never stored on a trial)
DERIVED: tuple[Metric, ...] = (
    Metric("fps", "fps", "frames per second, 1000 / latency_ms", objective=False, constraint=False, label="fps"),
)

#: the numbers every short table shows (the front, the summary), before any further objective
HEADLINE: tuple[str, ...] = ("miou", "latency_ms", "params", "madds")
#: the numbers an ablation table measures and a row's ``paper:`` may give, in table order (cost, then accuracy,
#: as the papers' tables); a paper key is a metric's name (stored units, e.g. ``madds`` as a count) or its
#: column (shown units, e.g. ``miou_pct``)
TABLE: tuple[str, ...] = ("params", "madds", "latency_ms", "fps", "miou", "pixel_acc", "mean_acc")
#: terminal tables show these plain counts with a prefix: name → (unit, scale of the stored value)
COMPACT: dict[str, tuple[str, float]] = {"params": ("M", 1e-6)}


def metric(name: str) -> Metric:
    """A stored or a derived metric (KeyError naming the known ones otherwise)."""
    for m in DERIVED:
        if m.name == name:
            return m
    return get(name)


def compact(m: Metric) -> tuple[str, float]:
    """(unit, scale) of ``m`` in a terminal table: :data:`COMPACT`'s where it has one, else the metric's own."""
    return COMPACT.get(m.name, (m.unit, m.scale))


def paper_metric(key: str) -> Metric | None:
    """The metric of :data:`TABLE` a ``paper:`` key gives, by its name or its column; None for other keys."""
    for name in TABLE:
        m = metric(name)
        if key in (m.name, m.column):
            return m
    return None


#: metrics whose value depends on the input size: an ablation table compares them with a paper's only at the
#: paper's input
INPUT_DEPENDENT: tuple[str, ...] = ("madds", "flops", "latency_ms", "latency_p90_ms", "latency_half_width_ms", "fps")
