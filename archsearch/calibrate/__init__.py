"""Calibrate the proxy: does a cheap training rank architectures the way a longer one does?

``archsearch calibrate SPEC`` trains the same architectures (the spec's rows, or K distinct configurations
sampled from its space with ``search.seed``) at a ladder of fidelities — a fidelity is (iterations, proxy scale),
written ``ITERxSCALE`` such as ``150x0.5`` — with several seeds at each cheap fidelity, and compares each cheap
fidelity's ranking of the architectures with the top (most expensive) fidelity's: Kendall τ and Spearman ρ
between one cheap run per architecture — what a search with ``proxy.seeds`` 1 ranks on — and the mean of the
top fidelity's runs — the best estimate of real training's ranking —, expected over the cheap seeds, with
bootstrap 95% confidence intervals (architectures resampled; a cheap seed drawn and the top seeds resampled
within each); the seed noise beside the spread between architectures, top-k overlap and the training time. It
recommends the cheapest fidelity whose τ lower bound clears a threshold. Zero-cost fidelities (``zc:naswot``,
``zc:params``, …) stand beside the trained ones: their runs are scores at initialisation, no training.

Every (architecture, fidelity, seed) training is one trial of the Optuna study ``<spec name>.calibrate`` in the
spec's storage, trained by the trial pipeline's own pieces (:mod:`archsearch.search.trial`: seeds, data context,
``train_proxy``; :func:`archsearch.training.scoring.evaluate` at label resolution). A run is found again by what
makes it comparable — architecture, fidelity, seed index and the rest of the training recipe — so a second invocation
trains only what is missing, also after the ladder or the architectures changed. Nothing is timed for latency.

Modules: :mod:`.ladder` (fidelities, architectures, the plan), :mod:`.runs` (the study, training and scoring a
run, the frame), :mod:`.stats` (rank agreement, bootstrap, noise, recommendation), :mod:`.outputs` (Markdown,
CSV, PNG, and ``calibration.json``, the result a spec's ``calibration:`` names so that its fronts say how far their
mIoU can be trusted: :mod:`archsearch.report.trust`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from archsearch import data as data_mod
from archsearch import report, search
from archsearch import spec as spec_mod
from archsearch.calibrate.ladder import (
    STUDY_SUFFIX,
    Arch,
    CalibrationError,
    Fidelity,
    Run,
    Rung,
    ZeroCost,
    architectures,
    default_ladder,
    parse_fidelity,
    parse_ladder,
    plan,
    recipe,
    resolve_ladder,
    study_name,
)
from archsearch.calibrate.outputs import HEADERS, markdown, plot, result, table_rows, write_outputs
from archsearch.calibrate.runs import execute, frame, open_study, score_run, time_left, train_run
from archsearch.calibrate.stats import (
    LEVEL,
    RESAMPLES,
    THRESHOLD,
    agreement,
    bootstrap,
    interval,
    kendall_tau_b,
    one_seed_each,
    pooled_std,
    recommend,
    recommendation_line,
    resampled_means,
    spearman_rho,
    statistics_table,
    top_k,
)
from archsearch.util.files import check_writable_dir

__all__ = [
    "HEADERS",
    "LEVEL",
    "RESAMPLES",
    "STUDY_SUFFIX",
    "THRESHOLD",
    "Arch",
    "CalibrationError",
    "Fidelity",
    "Run",
    "Rung",
    "ZeroCost",
    "agreement",
    "architectures",
    "bootstrap",
    "command",
    "default_ladder",
    "execute",
    "frame",
    "interval",
    "kendall_tau_b",
    "markdown",
    "one_seed_each",
    "open_study",
    "parse_fidelity",
    "parse_ladder",
    "plan",
    "plot",
    "pooled_std",
    "recipe",
    "recommend",
    "recommendation_line",
    "resampled_means",
    "resolve_ladder",
    "result",
    "score_run",
    "spearman_rho",
    "statistics_table",
    "study_name",
    "table_rows",
    "time_left",
    "top_k",
    "train_run",
    "write_outputs",
]


def command(
    spec_path: str,
    overrides: Sequence[str],
    *,
    storage: str | None = None,
    out: str | None = None,
    fidelities: str | None = None,
    top: str | None = None,
    archs: int = 6,
    seeds: int = 2,
    top_seeds: int = 1,
    k: int = 3,
    threshold: float = THRESHOLD,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
) -> dict[str, Path]:
    """``archsearch calibrate``: check the options, train what is missing, print and write the calibration."""
    if seeds < 2:
        raise CalibrationError(f"--seeds {seeds}; allowed: ≥ 2 (seed noise needs two seeds per cheap fidelity)")
    if top_seeds < 1 or archs < 2 or k < 1:
        raise CalibrationError("allowed: --top-seeds ≥ 1, --archs ≥ 2, --top-k ≥ 1")
    if not -1 < threshold <= 1:
        raise CalibrationError(f"--threshold {threshold:g}; allowed: a Kendall τ in (-1, 1]")
    spec = spec_mod.load(spec_path, overrides)
    top_f = parse_fidelity(top, option="--top") if top else None
    ladder: list[Rung] = (
        parse_ladder(fidelities) if fidelities else list(default_ladder(spec.proxy.iterations, spec.proxy.scale))
    )
    ladder, top_f = resolve_ladder(ladder, top_f)
    chosen = architectures(spec, archs)
    if k > len(chosen):
        raise CalibrationError(f"--top-k {k}; allowed: at most the {len(chosen)} architectures")
    url = search.storage_url(spec, storage)
    out_dir = Path(out) if out else search.artifacts_dir(spec, url) / "calibration"
    check_writable_dir(out_dir, f"--out {out_dir}" if out else f"output folder {out_dir}")
    runs = execute(
        spec_path, overrides, url, chosen, ladder, top_f, seeds=seeds, top_seeds=top_seeds, progress=progress, echo=echo
    )
    table = statistics_table(runs, ladder, top_f, k=k, seed=spec.search.seed)
    d = spec.data
    data = (
        f"Data: {d.name} ({d.train_split} → {d.val_split}{', root ' + str(d.root) if d.root else ''}); builder "
        f"{spec.builder or ', '.join(sorted({a.builder for a in chosen}))}, batch {spec.proxy.batch}, "
        f"lr {spec.proxy.lr:g}; {len(chosen)} architectures; {seeds} seeds at each cheap fidelity, {top_seeds} at "
        f"the top; study {study_name(spec)} in {url}."
    )
    echo(
        report.text_table(
            pd.DataFrame(table_rows(table, k), columns=HEADERS),
            [False, True, True, True, False, False, True, True, True, False, True, True, True],
        )
    )
    echo("seed noise, spread, median gap: mIoU points; train wall/CPU: training only")
    echo(recommendation_line(table, threshold, top_f))
    images = {split: len(data_mod.load(d, split, top_f.scale)) for split in (d.train_split, d.val_split)}  # cached
    calibration = result(
        spec, table, chosen, top_f, seeds=seeds, top_seeds=top_seeds, threshold=threshold, images=images
    )
    paths = write_outputs(
        out_dir,
        spec.name,
        table,
        runs,
        chosen,
        ladder,
        top_f,
        k=k,
        threshold=threshold,
        data=data,
        calibration=calibration,
    )
    echo("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths
