"""The sections of a spec file (``data:``, ``proxy:``, ``target:``, ``search:``, objectives, constraint bounds,
ablation rows, one builder's space): frozen pydantic dataclasses whose fields are the YAML keys, unknown keys
named with the allowed ones.

Some rules stay at the spec level (:mod:`archsearch.spec.model`) rather than in their section's type, so that code
may build the sections freely and leave the check to the module that uses them: ``data.name``, ``data.root`` and
the image limits (:mod:`archsearch.data` checks them again when it loads), whether a runtime is installed, and an
objective's name (reports take any name).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator
from pydantic.dataclasses import dataclass
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from typing_extensions import TypedDict

from archsearch.cost.counts import CONVENTIONS
from archsearch.cost.devices import DEVICE_PATTERN, DEVICES
from archsearch.cost.runtimes import RUNTIMES
from archsearch.data import NAMES as DATA_NAMES
from archsearch.spec import metrics
from archsearch.spec.declarations import Declaration, Number
from archsearch.spec.errors import known_keys, located

PosInt = Annotated[StrictInt, Field(gt=0)]
NonNegInt = Annotated[StrictInt, Field(ge=0)]
PosNumber = Annotated[Number, Field(gt=0)]
NonNegNumber = Annotated[Number, Field(ge=0)]

#: Metrics a trial records that can be objectives (from the trial record).
METRICS = metrics.objective_names()
#: Metrics known before training, so a constraint on them gates (prunes) a trial before it trains.
GATE_METRICS = metrics.constraint_names()
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
#: longest study name: it names the SQLite file and the artifacts folder (file names stop at 255 bytes)
MAX_NAME = 100

CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "path"]


class Section:
    """Unknown keys of a section name the allowed ones."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return known_keys(data, keys_of(cls))


def _positive_pair(value: tuple[int, int], key: str) -> None:
    if min(value) <= 0:
        raise located(f"{list(value)}: expected [H, W] > 0", key)


@dataclass(frozen=True, config=CONFIG)
class DataSpec(Section):
    """``data:`` — which data set the proxy trains and evaluates on."""

    name: Annotated[str, Field(json_schema_extra={"enum": list(DATA_NAMES)})] = "synthetic"
    root: str | None = None  # data set folder (cityscapes, camvid); ${VAR} expands
    train_split: str = "train"
    val_split: str = "val"
    # at most this many training images (synthetic: how many; default 64)
    train_images: Annotated[StrictInt | None, Field(json_schema_extra={"exclusiveMinimum": 0})] = None
    # at most this many evaluation images (synthetic: how many; default 16)
    val_images: Annotated[StrictInt | None, Field(json_schema_extra={"exclusiveMinimum": 0})] = None
    size: tuple[StrictInt, StrictInt] = (1024, 2048)  # synthetic only: native (H, W) that proxy.scale applies to
    cache_dir: str = "runs/cache"  # decoded, resized images (one .npy per data set, split and resolution)

    @model_validator(mode="after")
    def _size(self) -> DataSpec:
        _positive_pair(self.size, "size")
        return self


@dataclass(frozen=True, config=CONFIG)
class ProxySpec(Section):
    """``proxy:`` — the short training budget of each trial."""

    iterations: PosInt = 300
    batch: PosInt = 8
    scale: Annotated[Number, Field(gt=0, le=4)] = 0.25  # training/eval resolution relative to the native one
    lr: PosNumber = 0.01
    momentum: NonNegNumber = 0.9
    weight_decay: NonNegNumber = 5e-4
    poly_power: NonNegNumber = 0.9
    crop: tuple[StrictInt, StrictInt] | None = None  # random crop (H, W) at proxy resolution; None: the whole image
    scale_range: tuple[PosNumber, PosNumber] = (0.75, 1.5)  # random scaling before the crop
    flip: StrictBool = True
    amp: StrictBool = True  # mixed precision when training on CUDA
    eval_batch: PosInt = 4
    # keep rates to step through when keep_rate < 1
    prune_schedule: Annotated[tuple[Annotated[Number, Field(gt=0, le=1)], ...], Field(min_length=1)] | None = None
    workers: NonNegInt = 0  # DataLoader workers
    seeds: PosInt = 1  # trainings per trial (seeds derived from the trial's seed); miou is their mean
    # layout of weights and batches in training and evaluation (an execution detail, not compared between
    # studies): auto = channels_last on the CPU and on CUDA (with AMP when `amp`), NCHW elsewhere
    memory_format: Literal["auto", "channels_last", "nchw"] = "auto"
    # common random numbers: data order and augmentation drawn from (search.seed, data, proxy), so every
    # architecture of a study sees the same batches (initialisation stays from its knobs); false: from the trial
    common_random_numbers: StrictBool = False
    # evaluate an exponential moving average of the weights and batch-norm buffers with this decay; 0: the raw
    # weights after the last step
    ema_decay: Annotated[Number, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="after")
    def _ordered(self) -> ProxySpec:
        lo, hi = self.scale_range
        if lo > hi:
            raise located(f"{list(self.scale_range)}: expected [low, high] with 0 < low ≤ high", "scale_range")
        if self.crop is not None:
            _positive_pair(self.crop, "crop")
        s = self.prune_schedule
        if s is not None and any(a <= b for a, b in itertools.pairwise(s)):
            raise located(f"{list(s)}: expected decreasing keep rates in (0, 1]", "prune_schedule")
        return self


@dataclass(frozen=True, config=CONFIG)
class TargetSpec(Section):
    """``target:`` — where and at what input latency and multiply-adds are measured."""

    input: tuple[PosInt, PosInt, PosInt, PosInt] = (1, 3, 1024, 2048)  # [N, 3, H, W]
    # auto | cpu | cuda | cuda:N (a GPU by its index among those this process sees)
    device: Annotated[str, Field(json_schema_extra={"pattern": DEVICE_PATTERN})] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    # nchw | channels_last (often faster for depth-wise/pooling nets on CPU) | auto (channels_last on CUDA)
    memory_format: Literal["nchw", "channels_last", "auto"] = "nchw"
    warmup: NonNegInt = 3
    repeats: PosInt = 10
    # how multiply-adds are counted: measure.CONVENTIONS (conv_linear | wu2017)
    madds_convention: str = "conv_linear"
    threads: PosInt = 1  # torch/runtime threads, set for timing AND training/evaluation (stated default: 1)
    fold_bn: StrictBool = True  # fold batch norm into the convolutions before timing (as deployment toolchains do)
    max_seconds: PosNumber = 60.0  # bound of one latency measurement (warm-up included)
    rel_ci: Number = 0.02  # repeat until the median's 95% confidence half-width is within this fraction of it
    runtime: str = "eager"  # eager | compile | onnxruntime | openvino | tensorrt (archsearch.cost.runtimes)

    @model_validator(mode="after")
    def _consistent(self) -> TargetSpec:
        if self.input[1] != 3:
            raise located(f"{list(self.input)}: expected [N, 3, H, W]", "input")
        if not re.match(DEVICE_PATTERN, self.device):
            raise located(f"{self.device!r} is not allowed; allowed: {DEVICES}", "device")
        if self.madds_convention not in CONVENTIONS:
            raise located(
                f"{self.madds_convention!r} is not allowed; allowed: {', '.join(CONVENTIONS)}", "madds_convention"
            )
        if not 0 < self.rel_ci < 1:
            raise located(f"{self.rel_ci}; allowed: a number in (0, 1), e.g. 0.02", "rel_ci")
        if self.runtime not in RUNTIMES:
            raise located(f"{self.runtime!r} is not allowed; allowed: {', '.join(RUNTIMES)}", "runtime")
        return self


@dataclass(frozen=True, config=CONFIG)
class FidelitySpec(Section):
    """``search.fidelity:`` — rung-wise training (successive halving): rung k of ``rungs`` trains
    ``proxy.iterations / eta ** (rungs - 1 - k)`` iterations. Absent: every trial trains the full budget."""

    eta: Annotated[StrictInt, Field(ge=2)] = 3
    rungs: PosInt = 3
    # a zero-cost first rung: configurations are scored at initialisation (no training) in rounds of `screen`,
    # and only those within the best 1/eta of all scored go on to the trained rungs (rungs: 1 = the full budget)
    zero_cost: Literal[metrics.ZERO_COST] | None = None  # type: ignore[valid-type]
    screen: Annotated[StrictInt, Field(ge=2)] = 12  # configurations scored per screening round


@dataclass(frozen=True, config=CONFIG)
class SearchSpec(Section):
    """``search:`` — Optuna sampler and budget."""

    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    trials: PosInt = 20
    seed: StrictInt = 0
    timeout: PosNumber | None = None  # seconds for this invocation, None: no limit
    fidelity: FidelitySpec | None = None  # rung-wise training; None: full-budget search


@dataclass(frozen=True, config=CONFIG)
class Objective(Section):
    """One objective: a metric of the trial record and its direction (the spec checks the name)."""

    name: str
    direction: Literal["maximize", "minimize"]


class Bound(TypedDict, total=False):
    """A constraint's bounds: ``{max: V}``, ``{min: V}`` or both."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    max: Number
    min: Number


class Row(TypedDict, total=False):
    """One row of an ablation table (a plain mapping once validated): its label, knobs and the paper's values;
    ``variant`` when the registry's named variant gave them, ``builder`` when the row names its own builder. The
    loader fills label, knobs and paper (from the variant, or defaults), so a loaded row always has them."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    label: str
    knobs: dict[str, Any]
    paper: dict[str, Any]
    variant: str  # a named variant of the registry, <builder>.<name>
    builder: str  # the row's own builder (default: the spec's)


@dataclass(frozen=True, config=CONFIG)
class BuilderSpace(Section):
    """One builder of a ``builders:`` space: its fixed knobs and its searched knobs."""

    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    knobs: dict[str, Declaration] = dataclasses.field(default_factory=dict)

    @field_validator("fixed", "knobs", mode="before")
    @classmethod
    def knob_mapping(cls, value: Any) -> Any:
        return knob_mapping(value)


def knob_mapping(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise located("expected a mapping of knob names")
    return value


def check_url(url: str) -> None:
    """An SQLAlchemy URL (``sqlite:///runs/x.db``, ``postgresql://user@host/db``), else a located error."""
    try:
        make_url(url)
    except ArgumentError:
        raise located(
            f"{url!r} is not an SQLAlchemy URL; e.g. sqlite:///runs/study.db or postgresql://user:pw@host/db"
        ) from None
