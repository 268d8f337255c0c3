"""Gated trials record their violation as Optuna constraints; TPE learns from them; the front is feasible-aware."""

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from archsearch import cli, report
from archsearch.search import loop, session, space
from archsearch.search.trial import constraint_values, gate
from archsearch.spec import Spec, parse

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


@pytest.mark.slow
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
    assert not any(k.startswith("zc_") for k in t.user_attrs)  # nor scores it at initialisation
    # the violation, relative to the bound, is what Optuna's samplers read
    assert t.constraints == {"latency_ms.max": pytest.approx(t.user_attrs["latency_ms"] / 1e-6 - 1)}
    assert t.constraints["latency_ms.max"] > 0


GATED = {
    "name": "gated",
    "builder": "ndnet",
    "knobs": {
        "widths": {"each": [{"int": [8, 64]}, {"int": [16, 128]}, {"int": [32, 256]}]},
        "expansion": {"int": [1, 8]},
    },
    "constraints": {"latency_ms": {"max": 12.0}},
}


def _feasible_share(sampler: str, trials: int = 40, after: int = 15) -> tuple[float, list[optuna.trial.FrozenTrial]]:
    """Share of archsearch's proposals after the first ``after`` trials that pass archsearch's latency gate.

    Each trial is the pipeline up to the gate, as ``trial.run`` takes it: the run loop's ask through the spec's
    sampler (``study.sampler``: TPE re-seeded per trial, distinct configurations), ``space.sample_config``, a cost
    record (latency = widths[0] · expansion / 4 ms instead of a measurement: 16% of the space is under the bound),
    ``constraint_values`` stored on the trial, and ``gate``: a rejected trial is PRUNED, an accepted one COMPLETE
    with (mIoU, latency), mIoU growing with the model so that the objective pulls towards the gate.
    """
    spec = parse({**GATED, "search": {"sampler": sampler, "seed": 0}}, file="inline")
    st = optuna.create_study(sampler=session.sampler(spec), directions=["maximize", "minimize"])
    dists = space.distributions(spec)
    passed = []
    for _ in range(trials):
        trial = loop._ask(st, spec, dists)  # the run loop's ask
        _, knobs, _ = space.sample_config(trial, spec)
        size = knobs["widths"][0] * knobs["expansion"]
        cost = {"latency_ms": size / 4.0}
        for name, value in constraint_values(spec, cost).items():
            trial.set_constraint(name, value)
        passed.append(gate(spec, cost) is None)
        if passed[-1]:
            st.tell(trial, [math.log(size) / 10 + sum(knobs["widths"]) / 1e4, cost["latency_ms"]])
        else:
            st.tell(trial, state=TrialState.PRUNED)
    return sum(passed[after:]) / (trials - after), st.trials


@pytest.mark.slow
def test_tpe_learns_where_the_gate_rejects() -> None:
    # archsearch's TPE (through the DistinctSampler, from the spec) moves into the 16% of the space that the gate
    # lets through; the random sampler, on the same pipeline, stays near 16%
    tpe, trials = _feasible_share("tpe")
    random, _ = _feasible_share("random")
    assert tpe >= 0.6 and random <= 0.4, (tpe, random)
    # every gated trial carries its relative violation, which Optuna's samplers read as infeasibility
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.constraints["latency_ms.max"] > 0 for t in pruned)
    assert all(t.constraints["latency_ms.max"] <= 0 for t in trials if t.state == TrialState.COMPLETE)


def _independent_front(study: optuna.Study) -> list[int]:
    """Numbers of the COMPLETE, feasible (every constraint value ≤ 0) trials that no other such trial dominates:
    a plain O(n²) dominance check, independent of Optuna's and of the report's."""
    signs = [-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
    done = [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE
        and all(v <= 0 for k, v in t.system_attrs.items() if k.startswith("constraints:"))
    ]

    def dominates(a: list[float], b: list[float]) -> bool:
        la, lb = [s * x for s, x in zip(signs, a, strict=True)], [s * x for s, x in zip(signs, b, strict=True)]
        return all(x <= y for x, y in zip(la, lb, strict=True)) and la != lb

    return [t.number for t in done if not any(dominates(o.values, t.values) for o in done)]


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
    assert list(report.pareto_front(study, frame)["number"]) == [0] == _independent_front(study)
