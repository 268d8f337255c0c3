"""A zero-cost first rung (search.fidelity.zero_cost): the screening rule on hand-made trials, and a screened
search end to end on tiny synthetic scenes (every trial scored once, the screened-out ones PRUNED with reason)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from archsearch import cli
from archsearch import spec as spec_mod
from archsearch.search import rungs, screening
from archsearch.spec import metrics

TINY = {
    "name": "zc",
    "builder": "ndnet",
    "knobs": {
        "widths": {"choices": [[8, 16, 32], [12, 24, 48], [16, 32, 64]]},
        "expansion": {"choices": [1, 2, 4]},
    },
    "objectives": [{"name": "miou", "direction": "maximize"}, {"name": "params", "direction": "minimize"}],
    "data": {"name": "synthetic", "train_images": 4, "val_images": 2, "size": [32, 64]},
    "proxy": {"iterations": 3, "batch": 2, "scale": 1.0, "eval_batch": 2, "lr": 0.05},
    "target": {"input": [1, 3, 32, 64], "repeats": 2, "warmup": 0, "device": "cpu", "max_seconds": 0.2},
    "search": {"sampler": "tpe", "seed": 0, "fidelity": {"zero_cost": "naswot", "screen": 6, "eta": 3, "rungs": 1}},
}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _write(folder: Path, raw: dict, name: str = "zc.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(raw))
    return path


def test_values_put_the_score_in_place_of_accuracy():
    attrs = {"zc_naswot": 12.5, "params": 1000, "latency_ms": 3.0}
    assert screening.values(attrs, ["miou", "latency_ms", "params"], "naswot") == [12.5, 3.0, 1000.0]
    assert screening.values(attrs, ["pixel_acc"], "params") == [1000.0]  # params as the accuracy proxy
    assert screening.values({"params": 10}, ["miou"], "snip") is None


def test_decide_judges_a_round_against_every_scored_trial(in_tmp):
    spec = spec_mod.load(_write(in_tmp, TINY))
    study = optuna.create_study(directions=["maximize", "minimize"])
    # an earlier round: scored (x, params) = (10, 100) trained, (1, 900) screened out; and an unscored trial
    for value, params, state in ((10.0, 100, TrialState.COMPLETE), (1.0, 900, TrialState.PRUNED)):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                values=[0.5, params] if state == TrialState.COMPLETE else None,
                user_attrs={"zc_naswot": value, "params": params, "screen": {"promoted": True}},
            )
        )
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"zc_naswot": 99.0, "params": 1}))
    new = []
    for value, params in ((11.0, 90), (2.0, 800), (5.0, 500), (None, 50)):
        t = study.ask()
        t.set_user_attr("zc_naswot", value)
        t.set_user_attr("params", params)
        new.append(t)
    decisions = screening.decide(study, [t.number for t in new], spec)
    # 5 scored vectors (the unscored PRUNED trial and the one without a score do not count): keep max(1, 5 // 3)
    scored = {0: [10.0, 100.0], 1: [1.0, 900.0], 3: [11.0, 90.0], 4: [2.0, 800.0], 5: [5.0, 500.0]}
    for t in new[:3]:
        expected = rungs.promote(
            scored[t.number], [v for n, v in scored.items() if n != t.number], ["maximize", "minimize"], 3
        )
        assert decisions[t.number] == expected and expected.n == 5 and expected.keep == 1
    assert decisions[3].promoted and not decisions[4].promoted and not decisions[5].promoted
    assert decisions[6] is None  # no score: not judged
    reason = screening.record(new[1], spec, decisions[4])
    assert reason is not None and reason.startswith("screened out by zero-cost naswot: ")
    assert new[1].user_attrs["screen"]["promoted"] is False and new[1].user_attrs["pruned_reason"] == reason
    assert screening.record(new[3], spec, None) is None and new[3].user_attrs["screen"]["promoted"] is True


@pytest.mark.slow
def test_a_screened_search_trains_the_best_fraction(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'zc.db'}"
    spec_file = _write(in_tmp, TINY)
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "6", "-q"]) == 0
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name="zc", storage=url).get_trials()
    assert len(trials) == 6  # one round of 6 configurations: every trial counts once
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    screened = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(trained) + len(screened) == 6 and trained and screened
    for t in trials:  # every trial is scored at initialisation and carries the decision
        assert all(isinstance(t.user_attrs[f"zc_{n}"], float) for n in metrics.ZERO_COST_SCORES)
        assert t.user_attrs["screen"]["score"] == "naswot"
        assert t.user_attrs["screen"]["value"] == t.user_attrs["zc_naswot"] and t.user_attrs["screen"]["peers"] == 6
    vectors = {t.number: [t.user_attrs["zc_naswot"], t.user_attrs["params"]] for t in trials}
    for t in trials:  # the recorded decision is the promotion rule on (naswot, params) of the round
        d = rungs.promote(
            vectors[t.number], [v for n, v in vectors.items() if n != t.number], ["maximize", "minimize"], 3
        )
        assert t.user_attrs["screen"]["promoted"] is d.promoted is (t.state == TrialState.COMPLETE)
    for t in screened:
        assert "miou" not in t.user_attrs and "train_seconds" not in t.user_attrs  # never trained
        assert t.user_attrs["pruned_reason"].startswith("screened out by zero-cost naswot")
        assert f"trial {t.number:>3} PRUNED" in out
    for t in trained:
        assert 0 <= t.user_attrs["miou"] <= 1 and t.user_attrs["train_seconds"] > 0 and "rungs" not in t.user_attrs
    # a second round: 3 more, judged against all 9 scored
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "9", "-q"]) == 0
    trials = optuna.load_study(study_name="zc", storage=url).get_trials()
    assert len(trials) == 9 and all(t.user_attrs["screen"]["peers"] == 9 for t in trials[6:])
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 9  # 9 distinct configurations


@pytest.mark.slow
def test_a_full_budget_trial_records_its_zero_cost_scores(in_tmp):
    raw = {**TINY, "name": "plain", "search": {"sampler": "random", "seed": 0}}
    raw["proxy"] = {**TINY["proxy"], "iterations": 1}
    url = f"sqlite:///{in_tmp / 'p.db'}"
    assert cli.main(["run", str(_write(in_tmp, raw, "p.yaml")), "--storage", url, "--trials", "1", "-q"]) == 0
    (t,) = optuna.load_study(study_name="plain", storage=url).get_trials()
    assert t.state == TrialState.COMPLETE and "screen" not in t.user_attrs
    scores = {n: t.user_attrs[f"zc_{n}"] for n in metrics.ZERO_COST_SCORES}
    assert all(isinstance(v, float) for v in scores.values()), scores
    # the same scores as computed directly from the trial's seed and configuration
    from archsearch import builders, data
    from archsearch.training import seeds, zerocost

    spec = spec_mod.load(in_tmp / "p.yaml")
    seeds.seed_everything(t.user_attrs["seed"])
    model = builders.build("ndnet", 19, **t.user_attrs["knobs"])
    again = zerocost.on_dataset(model, data.load(spec.data, "train", spec.proxy.scale), t.user_attrs["seed"])
    assert again == scores


@pytest.mark.slow
def test_a_timeout_during_a_round_queues_the_scored_trials_again(in_tmp):
    raw = {**TINY, "name": "cut", "search": {**TINY["search"], "timeout": 0.5}}
    url = f"sqlite:///{in_tmp / 'c.db'}"
    assert cli.main(["run", str(_write(in_tmp, raw, "c.yaml")), "--storage", url, "--trials", "6", "-q"]) == 1
    trials = optuna.load_study(study_name="cut", storage=url).get_trials()
    # the first trial was scored, then the timeout ended the run before its round was decided: it is failed as
    # not trained (not counted) and its configuration queued for the next run; nothing is left RUNNING
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[0].user_attrs["fail_reason"] == "the run ended before training it" and trials[0].user_attrs["retry"]
    assert isinstance(trials[0].user_attrs["zc_naswot"], float) and "screen" not in trials[0].user_attrs
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # the same configuration, queued


@pytest.mark.parametrize(
    ("fidelity", "message"),
    [
        ({"zero_cost": "flops"}, "search.fidelity.zero_cost: 'flops' is not allowed; allowed: naswot, jacob_cov"),
        ({"zero_cost": "naswot", "screen": 1}, "search.fidelity.screen: 1 must be ≥ 2"),
    ],
)
def test_bad_screen_settings_are_one_line_and_exit_2(in_tmp, capsys, fidelity, message):
    raw = {**TINY, "search": {"fidelity": fidelity}}
    assert cli.main(["run", str(_write(in_tmp, raw)), "--storage", f"sqlite:///{in_tmp / 'x.db'}", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (in_tmp / "x.db").exists()


def test_a_pruning_builder_may_be_screened_with_one_trained_rung(in_tmp):
    raw = {**TINY, "builder": "icnet", "knobs": {"branches": {"choices": ["sub4", "sub24"]}}}  # keep_rate 0.5
    spec = spec_mod.load(_write(in_tmp, raw))
    assert spec.search.fidelity.rungs == 1 and spec.search.fidelity.zero_cost == "naswot"
    with pytest.raises(Exception, match="trains in pruning phases"):  # two trained rungs: refused, as before
        spec_mod.load(_write(in_tmp, {**raw, "search": {"fidelity": {"zero_cost": "naswot", "rungs": 2}}}, "b.yaml"))
    # without a zero-cost rung the saved spec (and the study's fingerprint) reads as before the keys existed
    plain = {**TINY, "search": {"fidelity": {"rungs": 1}}}
    saved = spec_mod.to_dict(spec_mod.load(_write(in_tmp, plain, "c.yaml")))
    assert saved["search"]["fidelity"] == {"eta": 3, "rungs": 1}
