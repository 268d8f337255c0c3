"""Reports rebuilt from Optuna storage: trial table, Pareto front (checked against a dominance check written here),
exports, ablation."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image

from archsearch.report import (
    ablation_table,
    data_description,
    export_pareto,
    front_table,
    pareto_front,
    protocol,
    summary,
    table_text,
    trials_frame,
)
from archsearch.report import (
    objectives as study_objectives,
)
from archsearch.report.plot import non_dominated_2d
from archsearch.spec import Objective
from archsearch.util.errors import ArchsearchError
from archsearch.util.formatting import fmt_ms, fmt_num, markdown_table

optuna.logging.set_verbosity(optuna.logging.WARNING)

MIOU_LAT = (Objective("miou", "maximize"), Objective("latency_ms", "minimize"))


def _study(objectives: tuple[Objective, ...]) -> optuna.Study:
    """A study as archsearch.search.session creates it: the objective names as Optuna's metric names (reports read
    the names there only)."""
    study = optuna.create_study(directions=[o.direction for o in objectives], storage=optuna.storages.InMemoryStorage())
    study.set_metric_names([o.name for o in objectives])
    return study


def _one_space(text: str) -> str:
    """Markdown from ``DataFrame.to_markdown`` pads cells to the column width: compare with single spaces."""
    return re.sub(r" +", " ", text)


def _attrs(miou: float, latency: float, **extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "params": 516_000,  # not a paper number (NDNet29's is written once, in its builder; issue 9)
        "madds": 7.9e9,
        "latency_ms": latency,
        "latency_p90_ms": latency * 1.1,
        "device": "cpu",
        "input_size": [1, 3, 64, 128],
        "miou": miou,
        "pixel_acc": 0.9,
        "mean_acc": 0.7,
        "iou_per_class": [0.5] * 19,
        "train_seconds": 1.5,
        "checkpoint": "runs/x.pt",
        "knobs": {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4},
        "builder": "ndnet",
    }
    attrs.update(extra)
    return attrs


def _add_complete(
    study: optuna.Study,
    objectives: tuple[Objective, ...],
    values: list[float],
    violation: float | None = None,
    **attrs: Any,
) -> None:
    """A COMPLETE trial; ``violation``: its Optuna constraint value (≤ 0 met), as the latency gate stores it."""
    named = dict(zip((o.name for o in objectives), values, strict=False))
    user_attrs = _attrs(named.get("miou", 0.5), named.get("latency_ms", 10.0), **attrs)
    user_attrs.update(named)
    study.add_trial(
        create_trial(
            values=values,
            user_attrs=user_attrs,
            params={"expansion": user_attrs["knobs"]["expansion"]},
            distributions={"expansion": IntDistribution(1, 8)},
            system_attrs={} if violation is None else {"constraints:latency_ms.max": violation},
        )
    )


def _independent_front(study: optuna.Study) -> list[int]:
    """Numbers of the COMPLETE trials that are feasible (every stored constraint value ≤ 0) and that no other such
    trial dominates (at least as good in every objective, better in one; equal vectors do not dominate each other):
    a plain O(n²) check written here, independent of Optuna's ``best_trials`` and of the report."""
    signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    candidates = []
    for t in study.trials:
        violations = [v for k, v in t.system_attrs.items() if k.startswith("constraints:")]
        if t.state == TrialState.COMPLETE and all(v <= 0 for v in violations):
            candidates.append((t.number, [s * v for s, v in zip(signs, t.values, strict=True)]))

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    return sorted(n for n, loss in candidates if not any(dominates(other, loss) for _, other in candidates))


def _add_pruned(study: optuna.Study, latency: float) -> None:
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            user_attrs={
                "latency_ms": latency,
                "pruned_reason": f"latency {latency} ms > 33 ms",
                "knobs": {"widths": [64, 128, 256], "depths": [3, 8, 3], "expansion": 6},
            },
            params={"w": 0.3},
            distributions={"w": FloatDistribution(0, 1)},
        )
    )


def _add_failed(study: optuna.Study) -> None:
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "CUDA out of memory"}))


# ----------------------------------------------------------------------------------------------- front


@pytest.mark.parametrize("seed", range(8))
def test_front_equals_an_independent_dominance_check_on_random_studies(seed: int) -> None:
    # 1–3 objectives of random directions, ties, pruned and failed trials; odd seeds store constraint values on
    # every finished trial (about a third of them violated), which leaves the infeasible ones off the front
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 4))
    objectives = tuple(Objective(f"obj{i}", str(rng.choice(["maximize", "minimize"]))) for i in range(m))
    study = _study(objectives)
    for _ in range(int(rng.integers(20, 60))):
        kind = rng.random()
        if kind < 0.1:
            _add_pruned(study, float(rng.uniform(30, 60)))
        elif kind < 0.15:
            _add_failed(study)
        else:  # coarse values so that equal vectors (ties) occur
            violation = float(rng.uniform(-1.0, 0.5)) if seed % 2 else None
            _add_complete(study, objectives, [float(v) for v in np.round(rng.random(m), 1)], violation)
    frame = trials_frame(study)
    front = pareto_front(study, frame)
    expected = _independent_front(study)
    assert sorted(front["number"]) == expected and expected
    assert (front["state"] == "COMPLETE").all()
    assert front.equals(pareto_front(study))
    assert list(front[objectives[0].name]) == sorted(front[objectives[0].name])


def test_dominated_trial_excluded_and_ties_kept() -> None:
    study = _study(MIOU_LAT)
    _add_complete(study, MIOU_LAT, [0.60, 20.0])  # 0: front
    _add_complete(study, MIOU_LAT, [0.50, 10.0])  # 1: front
    _add_complete(study, MIOU_LAT, [0.50, 10.0])  # 2: equal to 1, kept
    _add_complete(study, MIOU_LAT, [0.55, 25.0])  # 3: dominated by 0 (worse in both)
    _add_complete(study, MIOU_LAT, [0.60, 21.0])  # 4: dominated by 0 (equal mIoU, slower)
    _add_pruned(study, 5.0)  # faster than everything but pruned: never on the front
    _add_failed(study)
    front = pareto_front(study)
    assert list(front["number"]) == [1, 2, 0]  # sorted by mIoU
    assert sorted(front["number"]) == _independent_front(study) == [0, 1, 2]


def test_non_dominated_2d_projection_keeps_ties_and_directions() -> None:
    # the plot's 2-D staircase of a 3+-objective front (moocore's non-dominance test)
    points = pd.DataFrame({"miou": [0.6, 0.5, 0.5, 0.55, 0.6], "latency_ms": [20.0, 10.0, 10.0, 25.0, 21.0]})
    mask = non_dominated_2d(points, {"miou": "maximize", "latency_ms": "minimize"})
    assert mask.tolist() == [True, True, True, False, False]
    # the other way round (fast and low mIoU wanted): only the trials at the lowest mIoU and latency remain
    mask = non_dominated_2d(points, {"miou": "minimize", "latency_ms": "minimize"})
    assert mask.tolist() == [False, True, True, False, False]
    # against a brute-force dominance check on random integer points (many ties)
    rng = np.random.default_rng(3)
    values = pd.DataFrame(rng.integers(0, 5, size=(60, 2)).astype(float), columns=["a", "b"])
    losses = values.to_numpy() * np.array([-1.0, 1.0])
    dominated = [any((o <= v).all() and (o < v).any() for o in losses) for v in losses]
    assert non_dominated_2d(values, {"a": "maximize", "b": "minimize"}).tolist() == [not d for d in dominated]


# ----------------------------------------------------------------------------------------------- trial table


def test_trials_frame_columns_states_and_reasons() -> None:
    study = _study(MIOU_LAT)
    _add_complete(study, MIOU_LAT, [0.6, 20.0], row=0, row_label="NDNet29")
    _add_pruned(study, 45.0)
    _add_failed(study)
    frame = trials_frame(study)
    assert list(frame["state"]) == ["COMPLETE", "PRUNED", "FAIL"]
    assert list(frame.columns[:4]) == ["number", "state", "miou", "latency_ms"]
    assert frame.at[0, "miou"] == 0.6 and frame.at[0, "params"] == 516_000 and frame.at[0, "row_label"] == "NDNet29"
    assert frame.at[0, "knob.widths"] == "[24, 48, 96]" and frame.at[0, "knob.expansion"] == 4
    assert frame.at[0, "input_size"] == "[1, 3, 64, 128]"
    assert "iou_per_class" not in frame and "knobs" not in frame
    # a pruned trial's latency objective comes from its user attributes; its mIoU is missing
    assert frame.at[1, "latency_ms"] == 45.0 and math.isnan(frame.at[1, "miou"])
    assert frame.at[1, "reason"].startswith("latency 45.0 ms") and frame.at[1, "knob.widths"] == "[64, 128, 256]"
    assert frame.at[2, "reason"] == "CUDA out of memory" and pd.isna(frame.at[0, "reason"])
    text = summary(frame)
    assert "3 trials" in text and "1 PRUNED" in text and "1 FAIL" in text
    assert "best mIoU 60.00 % (trial 0)" in text and "fastest latency 20.0 ms (trial 0)" in text


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_trials_frame_names_objectives_from_study_metric_names() -> None:
    study = _study(MIOU_LAT)
    study.set_metric_names(["miou", "latency_ms"])
    _add_complete(study, MIOU_LAT, [0.4, 9.0])
    assert list(trials_frame(study).columns[:4]) == ["number", "state", "miou", "latency_ms"]
    assert study_objectives(study) == {"miou": "maximize", "latency_ms": "minimize"}


def test_a_study_without_metric_names_is_one_clear_error() -> None:
    # issue 9: objective names come from the study's Optuna metric names only; the study's "objectives" user
    # attribute and Optuna's value/values_<i> fallbacks are gone
    study = optuna.create_study(
        study_name="old", directions=["maximize", "minimize"], storage=optuna.storages.InMemoryStorage()
    )
    study.set_user_attr("objectives", ["miou", "latency_ms"])
    _add_complete(study, MIOU_LAT, [0.4, 9.0])
    with pytest.raises(ArchsearchError, match=r"^study 'old' stores no objective names \(Optuna metric names\)") as err:
        trials_frame(study)
    assert "\n" not in str(err.value) and "--set name=NEW" in str(err.value)
    with pytest.raises(ArchsearchError):
        front_table(study)


def test_markdown_table() -> None:
    frame = pd.DataFrame({"label": ["a|b", "c"], "params": [516000.0, math.nan], "miou %": [60.04, 1.23456]})
    lines = markdown_table(frame).splitlines()
    # through DataFrame.to_markdown now (issue 9): cells are padded to the column width, so compare them with one
    # space, and the separator's dashes fill the column (colons give the alignment)
    assert _one_space(lines[0]) == "| label | params | miou % |"
    assert re.sub(r"-+", "-", lines[1]) == "|:-|-:|-:|"
    assert _one_space(lines[2]) == "| a\\|b | 516000 | 60.04 |"
    assert _one_space(lines[3]) == "| c | — | 1.235 |"
    assert len({len(line) for line in lines}) == 1  # aligned columns
    width = len(lines[0].split("|")[2])  # " params " padded
    assert lines[3].split("|")[2] == "— ".rjust(width) and lines[3].split("|")[1] == " c".ljust(width - 1)  # aligned
    # headers are escaped too, and an explicit alignment wins over the column types (benchmarks' ready-made texts)
    text = markdown_table(pd.DataFrame({"a|b": ["1.5 ms", "x|y"]}), align=["right"])
    lines = [re.sub(r"-+", "-", _one_space(line)) for line in text.splitlines()]
    assert lines == ["| a\\|b |", "|-:|", "| 1.5 ms |", "| x\\|y |"]


# ----------------------------------------------------------------------------------------------- exports


@pytest.mark.slow
def test_export_pareto_writes_csv_json_md_png(tmp_path: Path) -> None:
    study = _study(MIOU_LAT)
    rng = np.random.default_rng(0)
    for _ in range(25):
        _add_complete(study, MIOU_LAT, [float(rng.uniform(0.3, 0.7)), float(rng.uniform(5, 40))])
    _add_pruned(study, 50.0)
    _add_failed(study)
    paths = export_pareto(study, tmp_path / "out", "ndnet")
    assert {k: p.name for k, p in paths.items()} == {
        "csv": "ndnet_pareto.csv",
        "json": "ndnet_pareto.json",
        "md": "ndnet_pareto.md",
        "png": "ndnet_pareto.png",
    }
    expected = _independent_front(study)
    assert len(expected) >= 2

    csv = pd.read_csv(paths["csv"])
    assert sorted(csv["number"]) == expected
    front = pareto_front(study)
    assert list(csv["number"]) == list(front["number"])
    np.testing.assert_allclose(csv["miou"], front["miou"])
    np.testing.assert_allclose(csv["latency_ms"], front["latency_ms"])

    records = json.loads(paths["json"].read_text())
    assert [r["number"] for r in records] == list(front["number"])
    assert records[0]["knobs"] == {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4}
    assert len(records[0]["iou_per_class"]) == 19
    by_number = {t.number: t for t in study.trials}
    assert all(r["miou"] == by_number[r["number"]].values[0] for r in records)

    md = _one_space(paths["md"].read_text())
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| number")]
    assert len(table_rows) == len(expected)
    # the headers are now the record's columns (miou_pct, madds_G: issue 9), the order as before
    assert "| number | miou_pct | latency_ms | params | madds_G | pixel_acc_pct | mean_acc_pct |" in md
    first = next(r for r in records if r["number"] == csv["number"][0])
    assert f"| {first['number']} | {100 * first['miou']:.4g} |" in md and "| 7.9 |" in md  # in % and in G

    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


@pytest.mark.slow
def test_export_pareto_three_objectives_plots_first_two(tmp_path: Path) -> None:
    objectives = (Objective("miou", "maximize"), Objective("params", "minimize"), Objective("latency_ms", "minimize"))
    study = _study(objectives)
    rng = np.random.default_rng(1)
    for _ in range(12):
        _add_complete(study, objectives, [float(v) for v in rng.random(3)])
    paths = export_pareto(study, tmp_path, "three")
    assert sorted(pd.read_csv(paths["csv"])["number"]) == _independent_front(study)
    assert paths["png"].stat().st_size > 1000


# ----------------------------------------------------------------------------------------------- ablation


ROWS = [
    {
        "label": "A",
        "knobs": {"widths": [16, 32, 64]},
        "paper": {"params": 100_000, "madds": 1.0e9, "fps": 100.0, "miou_pct": 50.0, "note": "base"},
    },
    {
        "label": "B",
        "knobs": {"widths": [24, 48, 96]},
        "paper": {"params": 200_000, "madds": 2.0e9, "fps": 50.0, "miou_pct": 55.0},
    },
    {
        "label": "C",
        "knobs": {"widths": [32, 64, 128]},
        "paper": {"params": 400_000, "madds": 4.0e9, "fps": 25.0, "miou_pct": 60.0},
    },
    {
        "label": "D",
        "knobs": {"widths": [48, 96, 192]},
        "paper": {"params": 800_000, "madds": 8.0e9, "fps": 12.5, "miou_pct": 65.0},
    },
]


def _add_row_trial(
    study: optuna.Study,
    row: int,
    params: int,
    madds: float,
    latency: float,
    miou: float,
    label: str | None = None,
    input_size: tuple[int, ...] = (1, 3, 1024, 2048),
) -> None:
    _add_complete(
        study,
        MIOU_LAT,
        [miou, latency],
        row=row,
        row_label=label or ROWS[row]["label"],
        params=params,
        madds=madds,
        input_size=list(input_size),
        dtype="float32",
    )


def test_ablation_table_values_ratios_and_kendall(tmp_path: Path) -> None:
    study = _study(MIOU_LAT)
    # measured: params and madds in the paper's order, latency in the paper's order, mIoU reversed
    _add_row_trial(study, 0, 110_000, 0.5e9, 8.0, 0.40)
    _add_row_trial(study, 1, 999, 9.9e9, 99.0, 0.99)  # superseded by the later trial of the same row
    _add_row_trial(study, 1, 220_000, 1.0e9, 16.0, 0.35)
    _add_row_trial(study, 2, 440_000, 2.0e9, 32.0, 0.30)
    _add_row_trial(study, 3, 1, 1.0, 1.0, 0.1, label="renamed")  # stale label: ignored, so row D is not run
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"row": 3, "row_label": "D", "latency_ms": 90.0}))
    _add_failed(study)

    table, paths = ablation_table(study, ROWS, tmp_path, "ndnet")
    assert list(table["label"]) == ["A", "B", "C", "D"]
    assert table.at[0, "knobs"] == "widths=[16, 32, 64]"
    assert list(table["trial"][:3]) == [0, 2, 3] and math.isnan(table.at[3, "trial"])

    np.testing.assert_allclose(table["params"][:3], [110_000, 220_000, 440_000])
    np.testing.assert_allclose(table["madds_G"][:3], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(table["paper_madds_G"], [1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(table["fps"][:3], [125.0, 62.5, 31.25])
    np.testing.assert_allclose(table["miou_pct"][:3], [40.0, 35.0, 30.0])
    # ratios to the first row: ours and the paper's scale the same way for params, madds and fps
    np.testing.assert_allclose(table["madds_G_rel"][:3], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(table["paper_madds_G_rel"], [1.0, 2.0, 4.0, 8.0])
    np.testing.assert_allclose(table["params_rel"][:3], table["paper_params_rel"][:3])
    np.testing.assert_allclose(table["fps_rel"][:3], [1.0, 0.5, 0.25])
    np.testing.assert_allclose(table["paper_miou_pct_rel"], [1.0, 1.1, 1.2, 1.3])
    # the row without a trial is NaN in every measured column, while its paper values stay
    for col in ("params", "madds_G", "latency_ms", "fps", "miou_pct", "params_rel"):
        assert math.isnan(table.at[3, col]), col
    assert table.at[3, "paper_params"] == 800_000
    assert table.at[0, "paper_note"] == "base" and pd.isna(table.at[1, "paper_note"])
    assert "paper_latency_ms" not in table and "paper_pixel_acc_pct" not in table  # no paper value: no column

    kendall = table.attrs["kendall"]
    assert kendall["params"]["tau"] == pytest.approx(1.0) and kendall["params"]["n"] == 3
    assert kendall["madds_G"]["tau"] == pytest.approx(1.0)
    assert kendall["fps"]["tau"] == pytest.approx(1.0)
    assert kendall["miou_pct"]["tau"] == pytest.approx(-1.0)
    assert 0 < kendall["params"]["p"] <= 1

    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == list(table.columns) and len(csv) == 4 and math.isnan(csv.at[3, "params"])
    md = _one_space(paths["md"].read_text())  # to_markdown pads the cells (issue 9)
    assert "| D | widths=[48, 96, 192] | — | — |" in md
    assert "- params: τ = 1.000" in md and "- miou_pct: τ = -1.000" in md
    assert "3 of 4 rows measured" in md and "Measured: latency on cpu · input 1×3×1024×2048 · float32" in md
    assert table.attrs["not_compared"] == {}


def test_ablation_table_kendall_needs_three_rows(tmp_path: Path) -> None:
    study = _study(MIOU_LAT)
    _add_row_trial(study, 0, 110_000, 0.5e9, 8.0, 0.40)
    _add_row_trial(study, 1, 220_000, 1.0e9, 16.0, 0.35)
    table, paths = ablation_table(study, ROWS, tmp_path, "two")
    assert table.attrs["kendall"] == {}
    assert "no comparable column has 3 or more rows" in paths["md"].read_text()
    empty, _ = ablation_table(_study(MIOU_LAT), ROWS[:2], tmp_path, "none")
    assert empty["trial"].isna().all() and empty["madds_G_rel"].isna().all()


# ----------------------------------------------------------------------------------------------- terminal text


@pytest.mark.parametrize(
    "value,text",
    [
        (6043.2, "6043"),
        (6040.0, "6040"),
        (123.4, "123"),
        (33.456, "33.5"),
        (1.234, "1.23"),
        (0.012345, "0.0123"),
        (9.996, "10.0"),
        (0.0, "0"),
        (-2.5, "-2.50"),
        (math.nan, "—"),
        (None, "—"),
        (1e7, "10000000"),
    ],
)
def test_fmt_num_plain_digits(value: Any, text: str) -> None:
    assert fmt_num(value) == text
    assert "e" not in fmt_num(value)


def test_fmt_ms() -> None:
    assert fmt_ms(6040.0) == "6040 ms" and fmt_ms(12.345) == "12.3 ms" and fmt_ms(0.5) == "0.500 ms"


def _cells(line: str) -> list[str]:
    """The cells of a line of an aligned text table: columns are two or more spaces apart."""
    return re.split(r"\s{2,}", line.strip())


def test_front_table_short_and_readable() -> None:
    study = _study(MIOU_LAT)
    _add_complete(study, MIOU_LAT, [0.60, 6043.2], params=1_234_567, madds=12.5e9)  # 0: front
    _add_complete(study, MIOU_LAT, [0.50, 10.0], knobs={"widths": [16, 32, 64], "depths": [3, 8, 3], "expansion": 2})
    _add_complete(study, MIOU_LAT, [0.40, 20.0])  # 2: dominated by 1
    _add_pruned(study, 5.0)
    _add_failed(study)
    study.add_trial(create_trial(state=TrialState.RUNNING))  # not finished: not counted
    text = front_table(study)
    lines = text.splitlines()
    assert lines[0] == "Pareto front (miou ↑, latency_ms ↓): 2 of 5 finished trials"
    assert lines[1] == "uncalibrated: run `archsearch calibrate SPEC`"  # nothing stored on the study (report.trust)
    header = _cells(lines[2])
    # headers from the record's labels and units (issue 9; were "params M" and "GMAdds")
    assert header == ["trial", "knobs", "mIoU %", "latency ms", "parameters M", "multiply-adds G"]
    rows = [_cells(line) for line in lines[3:]]
    assert len(rows) == 2 and all(len(r) == len(header) <= 8 for r in rows)
    # sorted by the first objective; only the knobs that differ between trials, lists without brackets
    assert rows[0] == ["1", "widths=16,32,64 expansion=2", "50.0", "10.0", "0.516", "7.90"]
    assert rows[1] == ["0", "widths=24,48,96 expansion=4", "60.0", "6043", "1.23", "12.5"]
    assert "e+" not in text
    # the same from the trial table, and an empty study says so
    assert front_table(study, trials_frame(study)) == text
    assert front_table(_study(MIOU_LAT)).endswith("0 of 0 finished trials; no COMPLETE trial yet")


def test_front_table_extra_objective_and_row_labels() -> None:
    objectives = (
        Objective("miou", "maximize"),
        Objective("latency_ms", "minimize"),
        Objective("pixel_acc", "maximize"),
    )
    study = _study(objectives)
    _add_complete(study, objectives, [0.6, 20.0, 0.9], row=0, row_label="NDNet29 (e=2)")
    lines = front_table(study).splitlines()
    assert _cells(lines[2])[-1] == "pixel accuracy %" and len(_cells(lines[2])) == 7  # the record's label (issue 9)
    assert _cells(lines[3])[:2] == ["0", "NDNet29 (e=2)"] and _cells(lines[3])[-1] == "90.0"


def test_protocol_and_data_description() -> None:
    study = _study(MIOU_LAT)
    _add_complete(study, MIOU_LAT, [0.6, 20.0], device="Xeon", threads=2, dtype="float32", input_size=[1, 3, 256, 512])
    _add_complete(
        study, MIOU_LAT, [0.5, 10.0], device="Xeon", threads=2, dtype="float32", input_size=[1, 3, 1024, 2048]
    )
    assert data_description(study) is None
    study.set_user_attr("spec", {"data": {"name": "camvid"}, "proxy": {"scale": 0.5}})
    text = protocol(trials_frame(study), data_description(study))
    assert (
        text == "latency on Xeon (2 threads) · input 1×3×256×512, 1×3×1024×2048 · float32 · data camvid at scale 0.500"
    )


@pytest.mark.slow
def test_export_pareto_plot_title_labels_and_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archsearch.report import pareto

    study = _study(MIOU_LAT)
    _add_complete(study, MIOU_LAT, [0.60, 20.0], device="cpu (1 thread)", dtype="float32")
    _add_complete(
        study,
        MIOU_LAT,
        [0.50, 10.0],
        device="cpu (1 thread)",
        dtype="float32",
        knobs={"widths": [16, 32, 64], "depths": [3, 8, 3], "expansion": 2},
    )
    _add_failed(study)
    study.add_trial(create_trial(state=TrialState.RUNNING))
    study.set_user_attr("spec", {"data": {"name": "synthetic"}, "proxy": {"scale": 0.125}})
    before = (dict(study.user_attrs), [t.user_attrs for t in study.trials])
    seen: dict[str, Any] = {}
    real = pareto.plot_pareto

    def spy(frame, front, objectives, path, title, labels=()):  # type: ignore[no-untyped-def]
        seen.update(title=title, labels=list(labels))
        real(frame, front, objectives, path, title, labels)

    monkeypatch.setattr(pareto, "plot_pareto", spy)
    paths = export_pareto(study, tmp_path, "nd")
    assert seen["title"] == (
        "nd: 2 on the front of 3 finished trials\n"
        "latency on cpu (1 thread) · input 1×3×64×128 · float32 · data synthetic at scale 0.125\n"
        "uncalibrated: run `archsearch calibrate SPEC`"
    )
    assert seen["labels"] == ["#1 widths=16,32,64 expansion=2", "#0 widths=24,48,96 expansion=4"]
    assert "Measured: latency on cpu (1 thread) · input 1×3×64×128" in paths["md"].read_text()
    with Image.open(paths["png"]) as image:
        assert image.size[0] > 300
    assert (dict(study.user_attrs), [t.user_attrs for t in study.trials]) == before


def test_table_text_compares_like_with_like(tmp_path: Path) -> None:
    study = _study(MIOU_LAT)
    # measured at 256×512 while the paper times and counts at 1024×2048
    _add_row_trial(study, 0, 110_000, 0.5e9, 8.0, 0.40, input_size=(1, 3, 256, 512))
    _add_row_trial(study, 1, 220_000, 1.0e9, 16.0, 0.35, input_size=(1, 3, 256, 512))
    _add_row_trial(study, 2, 440_000, 2.0e9, 32.0, 0.30, input_size=(1, 3, 256, 512))
    table, paths = ablation_table(study, ROWS, tmp_path, "nd")
    # params and mIoU do not depend on the input: compared; multiply-adds and fps do: not compared
    assert set(table.attrs["kendall"]) == {"params", "miou_pct"}
    assert set(table.attrs["not_compared"]) == {"madds_G", "fps"}
    assert table["madds_G_rel"].isna().all() and table["fps_rel"].isna().all()
    np.testing.assert_allclose(table["paper_fps"], [100.0, 50.0, 25.0, 12.5])  # the paper's numbers stay on file
    text = table_text(table, "nd")
    lines = text.splitlines()
    assert lines[0] == "nd: 3 of 4 rows measured"
    assert lines[1] == "measured: latency on cpu · input 1×3×256×512 · float32"
    assert lines[2] == "uncalibrated: run `archsearch calibrate SPEC`"  # nothing stored on the study (report.trust)
    # headers from the record's labels and units (issue 9; were "params M", "GMAdds" and "ms")
    assert _cells(lines[4]) == ["row", "parameters M (paper)", "multiply-adds G", "latency ms", "fps", "mIoU % (paper)"]
    assert _cells(lines[5]) == ["A", "0.110 (0.100)", "0.500", "8.00", "125", "40.0 (50.0)"]
    assert _cells(lines[8]) == ["D", "— (0.800)", "—", "—", "—", "— (65.0)"]
    assert "fps: not compared with the paper, measured at 256×512 (paper 1024×2048)" in text
    assert "Kendall τ, paper vs ours: parameters M 1.00 (n=3), mIoU % -1.00 (n=3)" in text
    assert max(len(line) for line in lines) <= 100
    assert "- fps: not compared with the paper: measured at 256×512 (paper 1024×2048)." in paths["md"].read_text()

    # at the paper's input the same columns are compared, beside the paper's values
    same = _study(MIOU_LAT)
    for row, (params, madds, ms, miou) in enumerate(
        [(110_000, 0.5e9, 8.0, 0.4), (220_000, 1e9, 16.0, 0.35), (440_000, 2e9, 32.0, 0.3)]
    ):
        _add_row_trial(same, row, params, madds, ms, miou)
    table, _ = ablation_table(same, ROWS, tmp_path, "nd")
    assert table.attrs["not_compared"] == {} and "fps" in table.attrs["kendall"]
    text = table_text(table, "nd")
    assert _cells(text.splitlines()[5])[3:5] == ["8.00", "125 (100)"]
    assert max(len(line) for line in text.splitlines()) <= 100  # the Kendall line of four columns wraps
    assert " ".join(text.split()).endswith("multiply-adds G 1.00 (n=3), fps 1.00 (n=3), mIoU % -1.00 (n=3)")


def test_ablation_table_paper_input_per_row(tmp_path: Path) -> None:
    rows = [dict(row, paper={**row["paper"], "input": [256, 512]}) for row in ROWS[:3]]
    study = _study(MIOU_LAT)
    for row, (params, madds, ms, miou) in enumerate(
        [(110_000, 0.5e9, 8.0, 0.4), (220_000, 1e9, 16.0, 0.35), (440_000, 2e9, 32.0, 0.3)]
    ):
        _add_row_trial(study, row, params, madds, ms, miou, input_size=(1, 3, 256, 512))
    table, _ = ablation_table(study, rows, tmp_path, "nd")
    assert table.attrs["not_compared"] == {}
    np.testing.assert_allclose(table["fps_rel"], [1.0, 0.5, 0.25])
