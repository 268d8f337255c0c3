"""Seeds of a trial: one seed from (``search.seed``, builder, resolved knobs), the training seeds derived from it,
the data seeds of common random numbers, and the scores summarised over them."""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from typing import Any

import numpy as np
import torch

from archsearch.spec import Spec
from archsearch.spec.fingerprint import fingerprint


def trial_seed(seed: int, *parts: Any) -> int:
    """A 31-bit seed derived from ``seed`` and ``parts`` (stable across processes and machines)."""
    text = "|".join([str(seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def seed_of(spec: Spec, resolved: dict[str, Any], builder: str | None = None) -> int:
    """The trial's seed: a function of ``search.seed``, the builder (default: the spec's) and the resolved knobs
    only."""
    return trial_seed(spec.search.seed, builder or spec.builder, json.dumps(resolved, sort_keys=True, default=list))


def training_seeds(seed: int, count: int) -> list[int]:
    """``count`` training seeds of a trial: its own seed first (so one seed trains as before), then seeds derived
    from it (stable across processes)."""
    return [seed] + [trial_seed(seed, "proxy seed", k) for k in range(1, count)]


def data_seeds(spec: Spec, count: int) -> list[int | None]:
    """The data seeds (batch sampling and augmentation) of a trial's ``count`` trainings: with
    ``proxy.common_random_numbers``, seeds derived from (``search.seed``, the compared data and proxy sections,
    training index) alone — every architecture of the study draws the same batches, the k-th training of each the
    k-th stream (common random numbers: the comparison of two systems under the same random inputs, Law & Kelton,
    "Simulation Modeling and Analysis", ch. 11); otherwise ``None`` each (the data follow the training seed)."""
    if not spec.proxy.common_random_numbers:
        return [None] * count

    fp = fingerprint(spec)
    proxy = {k: v for k, v in fp["proxy"].items() if k != "seeds"}
    base = json.dumps({"data": fp["data"], "proxy": proxy}, sort_keys=True)
    return [trial_seed(spec.search.seed, "common random numbers", base, k) for k in range(count)]


def seed_summary(runs: list[Any]) -> dict[str, Any]:
    """The trial's scores over its seeds (``scoring.Scores`` each): ``miou`` (the mean), ``miou_std`` (the
    sample standard deviation; None for a single seed), ``miou_seeds``, the mean ``pixel_acc``, ``mean_acc`` and
    per-class IoU (a class without IoU in one seed averages over the others; None in all: None)."""
    mious = [float(r.miou) for r in runs]
    per_class: list[float | None] = []
    for values in zip(*(r.iou_per_class for r in runs), strict=False):
        present = [float(v) for v in values if v is not None and not math.isnan(v)]
        per_class.append(statistics.fmean(present) if present else None)
    return {
        "miou": statistics.fmean(mious),
        "miou_std": statistics.stdev(mious) if len(mious) > 1 else None,
        "miou_seeds": mious,
        "pixel_acc": statistics.fmean(float(r.pixel_acc) for r in runs),
        "mean_acc": statistics.fmean(float(r.mean_acc) for r in runs),
        "iou_per_class": per_class,
    }


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's ``random`` (weight initialisation happens under this seed)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
