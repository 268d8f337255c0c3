"""How far a front's mIoU can be trusted, in one line that every front carries.

A spec names the calibration behind its proxy with ``calibration:`` — the ``calibration.json`` that ``archsearch
calibrate`` writes (:class:`Calibration`). When that calibration trained the study's proxy budget
(``proxy.iterations`` x ``proxy.scale``) on the same data set with the same training recipe, the statement quotes
its Kendall τ against the calibration's top fidelity with the bootstrap 95% interval (Kendall 1938; Efron &
Tibshirani 1993) and the number of architectures ranked; when the proxy is the top fidelity itself, its seed noise
and the spread between architectures; otherwise it says why the front is uncalibrated. ``run`` stores the statement
on the study (user attribute :data:`ATTR`), so a report read elsewhere quotes it without the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from archsearch.spec import Spec, to_dict
from archsearch.spec.errors import dotted
from archsearch.util.errors import SpecError

#: ``format`` of a calibration file, and the newest version this archsearch reads.
FORMAT: Literal["archsearch calibration"] = "archsearch calibration"
VERSION = 1
#: The study user attribute ``run`` writes the statement to.
ATTR = "calibration_statement"
#: Proxy keys that do not enter the comparison with a calibration: the fidelity itself, the seeds a trial
#: averages (a calibration's τ is of one seed) and the loader processes.
NOT_RECIPE = ("iterations", "scale", "seeds", "workers")
KEY = "calibration"

_READ = ConfigDict(extra="ignore", frozen=True)  # a newer file's added fields are read past


class CalibratedData(BaseModel):
    """The data set a calibration trained and evaluated on: the spec's ``data:`` keys that make two proxies
    comparable (``size`` matters for ``synthetic`` only) and the images counted in each split."""

    model_config = _READ

    name: str
    train_split: str
    val_split: str
    train_images: int | None = None  # the spec's limit (None: every image of the split)
    val_images: int | None = None
    size: tuple[int, int] | None = None  # synthetic: the native (H, W)
    images: dict[str, int] = {}  # split → images used

    def key(self) -> dict[str, Any]:
        """What must match for a study to borrow the calibration."""
        out: dict[str, Any] = {
            "name": self.name,
            "train_split": self.train_split,
            "val_split": self.val_split,
            "train_images": self.train_images,
            "val_images": self.val_images,
        }
        if self.name == "synthetic":
            out["size"] = tuple(self.size) if self.size is not None else None
        return out


class FidelityResult(BaseModel):
    """One row of the calibration table (:func:`archsearch.calibrate.statistics_table`). mIoU-valued fields are
    fractions (0–1) for a trained fidelity and the score's own units for a zero-cost one; None: not measured."""

    model_config = _READ

    label: str  # ITERxSCALE, or zc:NAME
    iterations: int
    scale: float | None
    trained: bool
    top: bool
    cost: float  # iterations × scale², relative to the top fidelity
    runs: int
    archs: int  # architectures compared with the top fidelity
    tau: float | None
    tau_lo: float | None
    tau_hi: float | None
    rho: float | None
    rho_lo: float | None
    rho_hi: float | None
    seed_noise: float | None  # pooled within-architecture standard deviation
    spread: float | None  # standard deviation of the architecture means
    median_gap: float | None = None
    topk: float | None = None
    wall_s: float | None = None
    cpu_s: float | None = None


class Calibration(BaseModel):
    """The machine-readable result of ``archsearch calibrate`` (``calibration.json``)."""

    model_config = _READ

    format: Literal["archsearch calibration"] = FORMAT
    version: int = VERSION
    spec: str  # the calibrated spec's name
    builders: tuple[str, ...]
    data: CalibratedData
    proxy: dict[str, Any]  # the training recipe besides the fidelity (the spec's proxy: without NOT_RECIPE)
    top: str  # the reference fidelity's label
    architectures: int
    seeds: int  # runs per architecture at each cheap fidelity
    top_seeds: int
    threshold: float  # the τ lower bound a fidelity must clear to be recommended
    recommended: str | None  # the cheapest fidelity that clears it (None: none does)
    recommendation: str
    fidelities: tuple[FidelityResult, ...]

    @model_validator(mode="after")
    def _has_top(self) -> Calibration:
        if self.version > VERSION:
            raise ValueError(f"version {self.version} is newer than this archsearch reads ({VERSION}); upgrade it")
        if self.top not in {f.label for f in self.fidelities}:
            raise ValueError(f"top {self.top!r} is none of the fidelities")
        return self

    def fidelity(self, label: str) -> FidelityResult | None:
        return next((f for f in self.fidelities if f.label == label), None)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


def finite(value: Any) -> float | None:
    """A number for JSON: None for NaN (not measured)."""
    v = float(value)
    return None if math.isnan(v) else v


def read(path: str | Path, *, file: str | None = None, key: str = KEY) -> Calibration:
    """The calibration at ``path``; a missing, unreadable or malformed file is one :class:`SpecError` line naming
    ``file`` (the spec) and ``key``."""
    p = Path(path)

    def error(message: str) -> SpecError:
        return SpecError(message, file=file or None, key=key)

    written = "the calibration.json that `archsearch calibrate SPEC` writes"
    if p.is_dir():
        raise error(f"{p} is a folder; expected {written}")
    if not p.is_file():
        raise error(f"{p}: no such file; expected {written}")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{p}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise error(f'{p}: not a calibration file (no "format": "{FORMAT}"); expected {written}')
    try:
        return Calibration.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = dotted(first["loc"])
        raise error(f"{p}: {where + ': ' if where else ''}{first['msg']}") from None


def builders_of(spec: Spec) -> list[str]:
    """Every builder a spec's trials may build: its space's and its rows'."""
    names = dict.fromkeys([*spec.spaces(), *(spec.row_builder(r) for r in spec.rows)])
    return sorted(names)


def data_of(spec: Spec, images: Mapping[str, int] | None = None) -> CalibratedData:
    d = spec.data
    return CalibratedData(
        name=d.name,
        train_split=d.train_split,
        val_split=d.val_split,
        train_images=d.train_images,
        val_images=d.val_images,
        size=(d.size[0], d.size[1]) if d.name == "synthetic" else None,
        images=dict(images or {}),
    )


def recipe_of(spec: Spec) -> dict[str, Any]:
    """The spec's proxy section without :data:`NOT_RECIPE` (plain JSON data)."""
    proxy = to_dict(spec)["proxy"]
    return {k: v for k, v in proxy.items() if k not in NOT_RECIPE}


def _data_text(d: CalibratedData) -> str:
    text = f"{d.name} {d.train_split}→{d.val_split}"
    limits = [f"{n} {split} images" for n, split in ((d.train_images, "train"), (d.val_images, "val")) if n]
    if d.name == "synthetic" and d.size is not None:
        limits.append(f"{d.size[0]}×{d.size[1]}")
    return text + (f" ({', '.join(limits)})" if limits else "")


def _proxy_label(spec: Spec) -> str:
    return f"{spec.proxy.iterations}x{spec.proxy.scale:g}"


def _uncalibrated(spec: Spec, why: str | None = None) -> str:
    command = f"run `archsearch calibrate {spec.path or 'SPEC'}`"
    return f"uncalibrated: {why}; {command}" if why else f"uncalibrated: {command}"


def _points(v: float | None) -> str:
    return "not measured" if v is None else f"{100 * v:.1f} points"


def judge(spec: Spec, cal: Calibration) -> str:
    """The statement for ``spec``'s proxy under the calibration ``cal`` (no file read)."""
    ours = data_of(spec)
    if ours.key() != cal.data.key():
        return _uncalibrated(spec, f"the calibration is on {_data_text(cal.data)}, this study on {_data_text(ours)}")
    missing = [b for b in builders_of(spec) if b not in cal.builders]
    if missing:
        return _uncalibrated(
            spec, f"the calibration ranked {', '.join(cal.builders)} architectures, not {', '.join(missing)}"
        )
    recipe = recipe_of(spec)
    changed = [k for k in recipe if k in cal.proxy and cal.proxy[k] != recipe[k]]
    if changed:
        k = changed[0]
        theirs, mine = json.dumps(cal.proxy[k]), json.dumps(recipe[k])
        return _uncalibrated(spec, f"the calibration trained with proxy.{k} {theirs}, this study with {mine}")
    proxy = _proxy_label(spec)
    row = cal.fidelity(proxy)
    if row is None or not row.trained:
        have = ", ".join(f.label for f in cal.fidelities if f.trained)
        return _uncalibrated(spec, f"proxy {proxy} is not a fidelity of the calibration ({have})")
    where = f"proxy {proxy} on {cal.data.name}"
    if row.top:
        noise = (
            f"seed noise {_points(row.seed_noise)}"
            if row.seed_noise is not None
            else f"seed noise not measured, {cal.top_seeds} seed each"
        )
        text = (
            f"mIoU: {where} is the calibration's reference ({noise}, spread {_points(row.spread)} over "
            f"{row.archs} architectures)"
        )
        seeds = spec.proxy.seeds
        if row.seed_noise is not None and row.spread is not None and row.seed_noise / math.sqrt(seeds) >= row.spread:
            ranked = "one run per architecture" if seeds == 1 else f"the mean of {seeds} seeds"
            text += f"; its noise is not below the spread: {ranked} ranks these architectures by noise"
        return text
    if row.tau is None or row.archs < 2:
        return _uncalibrated(spec, f"the calibration has no τ for {proxy} (fewer than 2 architectures compared)")
    interval = f" [{row.tau_lo:.2f}, {row.tau_hi:.2f}]" if row.tau_lo is not None and row.tau_hi is not None else ""
    text = f"mIoU: {where}, τ {row.tau:.2f}{interval} against {cal.top} over {row.archs} architectures"
    if spec.proxy.seeds > 1:
        text += f" (τ of one seed; trials average {spec.proxy.seeds})"
    if row.tau_lo is None or row.tau_lo < cal.threshold:
        text += f"; lower bound under {cal.threshold:g}: the calibration recommends {cal.recommended or cal.top}"
    return text


def stored(study: optuna.Study | None) -> str | None:
    """The statement ``run`` stored on ``study`` (None: none)."""
    said = study.user_attrs.get(ATTR) if study is not None else None
    return said if isinstance(said, str) and said else None


def statement(spec: Spec | None = None, study: optuna.Study | None = None) -> str:
    """What the front's mIoU can be trusted for, in one line: from the calibration file ``spec`` names when it is
    there; else the statement ``run`` stored on ``study`` (a report on another machine); else uncalibrated. A
    named file that is missing (with no stored statement) or malformed is a :class:`SpecError`."""
    said = stored(study)
    if spec is None:
        return said or "uncalibrated: run `archsearch calibrate SPEC`"
    if spec.calibration is None:
        return said or _uncalibrated(spec)
    if said is not None and not Path(spec.calibration).exists():
        return said
    return judge(spec, read(spec.calibration, file=spec.path))
