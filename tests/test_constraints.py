"""Gated trials record their violation as Optuna constraints; TPE learns from them; the front is feasible-aware."""

from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from archsearch import cli
from archsearch.report import report
from archsearch.search.trial import constraint_values
from archsearch.spec import Spec

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set", "data.name=synthetic", "--set", "data.train_images=2", "--set", "data.val_images=1",
    "--set", "data.size=[64,128]", "--set", "proxy.iterations=1", "--set", "proxy.batch=1",
    "--set", "proxy.scale=0.5", "--set", "target.input=[1,3,64,128]", "--set", "target.repeats=1",
    "--set", "target.warmup=0", "--set", "target.device=cpu",  # the CPU (auto: CUDA on a GPU host)
]  # fmt: skip


def test_constraint_values_are_relative_violations() -> None:
    spec = Spec(name="x", builder="ndnet", constraints={"latency_ms": {"max": 20.0}, "params": {"min": 100.0}})
    v = constraint_values(spec, {"latency_ms": 30.0, "params": 150.0})
    assert v == pytest.approx({"latency_ms.max": 0.5, "params.min": -0.5})
    assert constraint_values(spec, {"latency_ms": 10.0, "params": 50.0}) == pytest.approx(
        {"latency_ms.max": -0.5, "params.min": 0.5}
    )


def test_gated_trial_records_its_violation(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'C.db'}"
    args = [
        "run",
        str(ROOT / "spaces" / "ndnet.yaml"),
        "--storage",
        url,
        "--trials",
        "1",
        "-q",
        *TINY,
        "--set",
        "constraints={latency_ms: {max: 0.000001}}",
    ]
    assert cli.main(args) == 1
    (t,) = optuna.load_study(study_name="ndnet", storage=url).get_trials()
    assert t.state == TrialState.PRUNED and "train_seconds" not in t.user_attrs  # still skips training
    # the violation, relative to the bound, is what Optuna's samplers read
    assert t.constraints == {"latency_ms.max": pytest.approx(t.user_attrs["latency_ms"] / 1e-6 - 1)}
    assert t.constraints["latency_ms.max"] > 0


def _tpe_share_below(with_constraints: bool) -> float:
    """Share of TPE proposals in x < 0.5 after 30 trials: x < 0.5 COMPLETE (values ~ x), x ≥ 0.5 PRUNED by the
    gate (their violation ~ x)."""
    dist = FloatDistribution(0.0, 1.0)
    study = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=1, multivariate=True, n_startup_trials=5),
    )
    for i in range(30):
        x = (i + 0.5) / 30
        attrs = {"constraints:latency_ms.max": x - 0.5} if with_constraints else {}
        if x < 0.5:
            study.add_trial(create_trial(params={"x": x}, distributions={"x": dist}, values=[x, x], system_attrs=attrs))
        else:
            study.add_trial(
                create_trial(params={"x": x}, distributions={"x": dist}, state=TrialState.PRUNED, system_attrs=attrs)
            )
    below = 0
    for _ in range(40):
        trial = study.ask({"x": dist})
        below += trial.params["x"] < 0.5
        study.tell(trial, state=TrialState.FAIL)  # keep the history as it is
    return below / 40


def test_tpe_learns_where_the_gate_rejects() -> None:
    # With the violation recorded, the gated trials are ranked (infeasible, by how far over) and TPE avoids them.
    assert _tpe_share_below(True) >= 0.85


def test_front_leaves_out_infeasible_trials() -> None:
    dist = FloatDistribution(0.0, 1.0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["miou", "latency_ms"])  # reports read the objective names here only (issue 9)
    for x, miou, lat, violation in [(0.1, 0.5, 10.0, -0.5), (0.2, 0.6, 5.0, 0.5), (0.3, 0.4, 12.0, -0.4)]:
        study.add_trial(
            create_trial(
                params={"x": x},
                distributions={"x": dist},
                values=[miou, lat],
                system_attrs={"constraints:latency_ms.max": violation},
            )
        )
    frame = report.trials_frame(study)
    assert list(frame["feasible"]) == [True, False, True]
    assert list(frame["violation"]) == pytest.approx([0.0, 0.5, 0.0])
    # trial 1 dominates both others but violates a constraint: the front is trial 0 alone (as Optuna's)
    assert list(report.pareto_front(study, frame)["number"]) == [0]
    assert [t.number for t in study.best_trials] == [0]
