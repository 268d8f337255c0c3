"""YAML → validated, frozen spec. ``--set a.b=v`` overrides; ``${VAR}`` expansion in paths; clear errors.

Every section is a frozen dataclass whose fields are the YAML keys (unknown keys are errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataSpec:
    """``data:`` — which data set the proxy trains and evaluates on."""

    name: str = "synthetic"  # cityscapes | camvid | synthetic
    root: str | None = None  # data set folder (cityscapes, camvid); ${VAR} expands
    train_split: str = "train"
    val_split: str = "val"
    train_images: int | None = None  # at most this many training images (synthetic: how many; default 64)
    val_images: int | None = None  # at most this many evaluation images (synthetic: how many; default 16)
    size: tuple[int, int] = (1024, 2048)  # synthetic only: native (H, W) that proxy.scale applies to
    cache_dir: str = "runs/cache"  # decoded, resized images (one .npy per data set, split and resolution)


@dataclass(frozen=True)
class ProxySpec:
    """``proxy:`` — the short training budget of each trial."""

    iterations: int = 300
    batch: int = 8
    scale: float = 0.25  # training/eval resolution relative to the data's native resolution
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    crop: tuple[int, int] | None = None  # random crop (H, W) at proxy resolution; None: the whole image
    scale_range: tuple[float, float] = (0.75, 1.5)  # random scaling before the crop
    flip: bool = True
    amp: bool = True  # mixed precision when training on CUDA
    eval_batch: int = 4
    prune_schedule: tuple[float, ...] | None = None  # keep rates to step through when keep_rate < 1
    workers: int = 0  # DataLoader workers


@dataclass(frozen=True)
class TargetSpec:
    """``target:`` — where and at what input latency and multiply-adds are measured."""

    input: tuple[int, int, int, int] = (1, 3, 1024, 2048)
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | float16 | bfloat16
    warmup: int = 3
    repeats: int = 10


@dataclass(frozen=True)
class SearchSpec:
    """``search:`` — Optuna sampler and budget."""

    sampler: str = "tpe"  # tpe | nsga2 | random | grid
    trials: int = 20
    seed: int = 0
    timeout: float | None = None  # seconds for this invocation, None: no limit


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # maximize | minimize


@dataclass(frozen=True)
class Spec:
    """A whole spec file."""

    name: str
    builder: str
    fixed: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)
    rows: tuple[dict[str, Any], ...] = ()
    objectives: tuple[Objective, ...] = (Objective("miou", "maximize"), Objective("latency_ms", "minimize"))
    constraints: dict[str, dict[str, float]] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    proxy: ProxySpec = field(default_factory=ProxySpec)
    target: TargetSpec = field(default_factory=TargetSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    storage: str | None = None
    num_classes: int | None = None  # None: the data set's
    path: str = ""  # the file it came from
