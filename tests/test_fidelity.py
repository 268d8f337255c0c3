"""Multi-fidelity multi-objective search (search.fidelity): rung budgets, the promotion rule on hand-made rung
records, a fit run in parts, and a search end to end on tiny synthetic scenes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
import torch
import torch.nn as nn
from optuna.trial import TrialState

from archsearch import cli, data, report
from archsearch.search import rungs
from archsearch.spec import ProxySpec, fidelity
from archsearch.training import checkpoint, train

MAX_MIN = ["maximize", "minimize"]


# -- rung budgets ----------------------------------------------------------------------------------------


def test_rung_budgets_end_at_the_full_budget_and_grow_by_eta():
    assert fidelity.budgets(270, 3, 3) == [30, 90, 270]
    assert fidelity.budgets(100, 2, 3) == [25, 50, 100]
    assert fidelity.budgets(10, 3, 2) == [3, 10]  # 10 / 3 rounded
    assert fidelity.budgets(7, 3, 1) == [7]  # one rung: the full-budget trial
    assert fidelity.budgets(9, 3, 3) == [1, 3, 9]
    with pytest.raises(ValueError, match="not strictly increasing"):
        fidelity.budgets(4, 3, 3)  # [1, 1, 4]
    with pytest.raises(ValueError):
        fidelity.budgets(9, 1, 3)


# -- the promotion rule ----------------------------------------------------------------------------------


def test_the_first_trial_at_a_rung_goes_on():
    d = rungs.promote([0.1, 50.0], [], MAX_MIN, eta=3)
    assert d.promoted and d.n == 1 and d.keep == 1 and d.ahead == 0


def test_a_dominated_trial_stops_and_a_non_dominated_one_goes_on():
    others = [[0.5, 5.0], [0.4, 8.0]]  # (mIoU ↑, latency ↓): (0.4, 8) is dominated by (0.5, 5)
    dominated = rungs.promote([0.3, 10.0], others, MAX_MIN, eta=3)
    assert not dominated.promoted and dominated.rank == 2 and dominated.ahead == 2 and dominated.keep == 1
    better = rungs.promote([0.6, 12.0], others, MAX_MIN, eta=3)  # more accurate, slower: on the first front
    assert better.promoted and better.rank == 0 and better.ahead == 0
    faster = rungs.promote([0.1, 1.0], others, MAX_MIN, eta=3)  # least accurate but fastest: on the front too
    assert faster.promoted and faster.rank == 0
    # the directions matter: minimising both, (0.3, 10) is dominated by no one
    assert rungs.promote([0.3, 10.0], others, ["minimize", "minimize"], eta=3).rank == 0


def test_eta_sets_how_many_go_on():
    # two trials on the first front, this one alone on the second, seven behind it: 10 at the rung
    front = [[0.9, 10.0], [0.8, 5.0]]
    behind = [[0.05 * i, 20.0 + i] for i in range(1, 8)]
    own = [0.7, 9.0]  # dominated by (0.8, 5) only
    three = rungs.promote(own, front + behind, MAX_MIN, eta=3)
    assert (three.n, three.keep, three.ahead, three.rank) == (10, 3, 2, 1) and three.promoted
    four = rungs.promote(own, front + behind, MAX_MIN, eta=4)
    assert (four.keep, four.ahead) == (2, 2) and not four.promoted


def test_crowding_distance_orders_a_front_and_ties_favour_the_trial():
    front = np.array([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [4.0, 0.0]])
    dist = rungs.crowding(front)
    assert math.isinf(dist[0]) and math.isinf(dist[3])
    assert dist[1] == pytest.approx(2 / 4 + 2 / 3) and dist[2] == pytest.approx(3 / 4 + 2 / 3)
    # as losses (minimise both): all four on one front; the interior point with the smaller distance has three
    # ahead of it (two ends and the other interior point)
    mins = ["minimize", "minimize"]
    d = rungs.promote(front[1], front[[0, 2, 3]], mins, eta=2)
    assert (d.rank, d.ahead, d.keep) == (0, 3, 2) and not d.promoted
    d = rungs.promote(front[2], front[[0, 1, 3]], mins, eta=2)
    assert (d.ahead, d.promoted) == (2, False)
    # an identical twin is not ahead of the trial: ties count in its favour
    twin = rungs.promote([0.5, 5.0], [[0.5, 5.0], [0.1, 9.0]], MAX_MIN, eta=3)
    assert twin.promoted and twin.ahead == 0


@pytest.mark.parametrize("seed", range(4))
def test_ranks_are_the_fronts_peeled_one_after_another(seed):
    # moocore's ranks against the definition: rank r is the non-dominated set once ranks < r are removed; equal
    # vectors share a rank (integer values in a small range make many ties)
    rng = np.random.default_rng(seed)
    loss = rng.integers(0, 4, size=(int(rng.integers(1, 30)), int(rng.integers(1, 4)))).astype(float)
    expected = np.full(len(loss), -1)
    rank = 0
    while (expected < 0).any():
        left = np.flatnonzero(expected < 0)
        for i in left:
            if not any((loss[j] <= loss[i]).all() and (loss[j] < loss[i]).any() for j in left):
                expected[i] = rank
        rank += 1
    ranks, dist = rungs.rank_and_crowding(loss)
    assert ranks.tolist() == expected.tolist()
    assert dist.shape == (len(loss),)


def _frozen(number, state, rungs, **attrs):
    return SimpleNamespace(number=number, state=state, user_attrs={"rungs": rungs, **attrs})


def test_peers_are_the_other_trials_that_reached_the_rung_with_the_same_budget():
    r = lambda its, miou, s=1.0: {"iterations": its, "miou": miou, "seconds": s}  # noqa: E731
    trials = [
        _frozen(0, TrialState.COMPLETE, [r(3, 0.2), r(9, 0.4)], latency_ms=5.0),
        _frozen(1, TrialState.RUNNING, [r(3, 0.3)], latency_ms=7.0),
        _frozen(2, TrialState.RUNNING, [r(3, 0.9)], latency_ms=1.0),  # the deciding trial itself
        _frozen(3, TrialState.FAIL, [r(3, 0.8)], latency_ms=2.0),  # failed: may run again, not counted
        _frozen(4, TrialState.COMPLETE, [r(4, 0.8)], latency_ms=2.0),  # another budget (a changed spec)
        _frozen(5, TrialState.PRUNED, None, latency_ms=40.0),  # gated: never trained
        _frozen(6, TrialState.COMPLETE, [r(3, 0.1)]),  # no latency recorded
    ]
    assert rungs.peers(trials, 2, 0, 3, ["miou", "latency_ms"]) == [[0.2, 5.0], [0.3, 7.0]]
    assert rungs.peers(trials, 2, 1, 9, ["miou", "latency_ms"]) == [[0.4, 5.0]]
    # train_seconds as an objective is the rung's cumulative training time
    assert rungs.peers(trials, 2, 0, 3, ["train_seconds"]) == [[1.0], [1.0], [1.0]]


# -- a fit in parts ---------------------------------------------------------------------------------------


class _DropoutNet(nn.Module):
    """Uses torch's global random state in its forward (dropout), to show that it is carried between parts."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 19, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _tiny_set() -> data.SegDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
    labels = (images[..., 0] // 64).astype(np.uint8)  # a learnable rule: the red channel's quarter
    return data.SegDataset(data.info("synthetic"), images, labels)


@pytest.mark.slow
def test_a_fit_in_parts_equals_one_fit_whatever_runs_between_the_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))  # no waiting for other processes' timings
    proxy = ProxySpec(iterations=7, batch=2, lr=0.05, scale_range=(1.0, 1.0))
    dataset = _tiny_set()
    torch.manual_seed(1)
    whole = _DropoutNet()
    parts = _DropoutNet()
    parts.load_state_dict(whole.state_dict())
    one = train.fit(whole, dataset, proxy, "cpu", seed=3, progress=False)
    trainer = train.Trainer(parts, dataset, proxy, "cpu", seed=3)
    losses = []
    for n in (1, 2, 4):
        losses += trainer.advance(n).losses
        torch.rand(100)  # global random numbers drawn between the parts (an evaluation's loader does)
        parts.eval()
    assert losses == one.losses
    for (name, a), b in zip(whole.state_dict().items(), parts.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="beyond the 7"):
        trainer.advance(1)
    # and the parts are not a fresh fit each: restarting the optimizer (momentum, schedule) gives other weights
    torch.manual_seed(1)
    again = _DropoutNet()
    train.fit(again, dataset, proxy, "cpu", seed=3, iterations=3, progress=False)
    train.fit(again, dataset, proxy, "cpu", seed=3, iterations=4, progress=False)
    assert not all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), parts.state_dict().values(), strict=False)
    )


# -- a search end to end ----------------------------------------------------------------------------------

TINY = {
    "name": "mf",
    "builder": "ndnet",
    "knobs": {
        "widths": {"choices": [[8, 16, 32], [12, 24, 48], [16, 32, 64]]},
        "expansion": {"choices": [1, 2, 4]},
    },
    # params is deterministic (latency is not), so which trials stop is the same in every run on the CPU
    "objectives": [{"name": "miou", "direction": "maximize"}, {"name": "params", "direction": "minimize"}],
    "data": {"name": "synthetic", "train_images": 4, "val_images": 2, "size": [32, 64]},
    "proxy": {"iterations": 9, "batch": 2, "scale": 1.0, "eval_batch": 2, "lr": 0.05},
    "target": {"input": [1, 3, 32, 64], "repeats": 2, "warmup": 0, "device": "cpu", "max_seconds": 0.2},
    "search": {"sampler": "tpe", "seed": 0, "fidelity": {"eta": 3, "rungs": 3}},
}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _write(folder: Path, raw: dict, name: str = "mf.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.slow
def test_a_multi_fidelity_search_stops_some_trials_and_continues_the_promoted_ones(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'mf.db'}"
    spec_file = _write(in_tmp, TINY)
    assert cli.main(["run", str(spec_file), "--storage", url, "--trials", "6", "-q"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="mf", storage=url)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)  # a stopped trial counts once
    stopped = [t for t in trials if t.user_attrs.get("stopped_at_rung") is not None]
    full = [t for t in trials if t.user_attrs.get("stopped_at_rung") is None]
    assert stopped and full, [t.user_attrs.get("stopped_at_rung") for t in trials]
    assert trials[0] in full  # the first trial at every rung goes on
    for t in full:
        rungs = t.user_attrs["rungs"]
        assert [r["iterations"] for r in rungs] == [1, 3, 9] and t.user_attrs["rung"] == 2
        assert t.values[0] == rungs[-1]["miou"] == t.user_attrs["miou"]
        assert all(r["promoted"] for r in rungs[:-1]) and "promoted" not in rungs[-1]
    for t in stopped:
        k = t.user_attrs["stopped_at_rung"]
        rungs = t.user_attrs["rungs"]
        assert len(rungs) == k + 1 and t.user_attrs["rung"] == k and rungs[-1]["promoted"] is False
        assert rungs[-1]["iterations"] < 9  # it trained fewer iterations
        assert t.values[0] == rungs[-1]["miou"]  # COMPLETE with its last rung's values
        assert t.user_attrs["train_seconds"] == rungs[-1]["seconds"]
        assert f"trial {t.number:>3} COMPLETE" in out and f"stopped at rung {k}, {rungs[-1]['iterations']} it" in out
    for t in trials:  # times grow rung by rung; CPU time is recorded beside wall time
        rungs = t.user_attrs["rungs"]
        assert all(
            a["seconds"] < b["seconds"] and a["cpu_seconds"] <= b["cpu_seconds"] for a, b in itertools.pairwise(rungs)
        )
        assert t.user_attrs["budget"]["fidelity"] == {"eta": 3, "rungs": 3, "budgets": [1, 3, 9]}

    # the front compares top-rung trials only; the stopped ones are listed as such
    frame = report.trials_frame(study)
    front = report.pareto_front(study, frame)
    assert set(front["number"]) == {t.number for t in report.best_trials(study)}
    assert set(front["number"]) <= {t.number for t in full} and len(front) >= 1
    assert f"{len(stopped)} COMPLETE stopped at a lower rung" in report.summary(frame)
    assert "rungs" not in frame.columns

    # a promoted trial continued from its own weights: the same configuration trained at the full budget in a
    # full-budget study (the same first sample: same sampler seed) has exactly the same weights and scores
    plain = {**TINY, "name": "full", "search": {"sampler": "tpe", "seed": 0}}
    assert cli.main(["run", str(_write(in_tmp, plain, "full.yaml")), "--storage", url, "--trials", "1", "-q"]) == 0
    (ref,) = optuna.load_study(study_name="full", storage=url).get_trials()
    first = trials[0]
    assert ref.params == first.params and "rungs" not in ref.user_attrs
    assert ref.user_attrs["miou"] == first.user_attrs["miou"]
    assert ref.user_attrs["final_loss"] == first.user_attrs["final_loss"] == first.user_attrs["rungs"][-1]["final_loss"]
    assert ref.user_attrs["iou_per_class"] == first.user_attrs["iou_per_class"]
    a = checkpoint.read(ref.user_attrs["checkpoint"])["state_dict"]
    b = checkpoint.read(first.user_attrs["checkpoint"])["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ref.user_attrs["train_cpu_seconds"] > 0 and ref.user_attrs["eval_cpu_seconds"] > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"search": {"fidelity": {"eta": 1}}}, "search.fidelity.eta: 1 must be ≥ 2"),
        ({"search": {"fidelity": {"rungs": 0}}}, "search.fidelity.rungs: 0 must be > 0"),
        ({"search": {"fidelity": {"rungs": 4}}}, "search.fidelity: rung budgets [1, 1, 3, 9] are not strictly"),
        ({"search": {"fidelity": {"speed": 2}}}, "search.fidelity.speed: unknown key; allowed: eta, rungs"),
        ({"search": {"fidelity": 3}}, "search.fidelity: expected a mapping"),
        (
            {"builder": "icnet", "knobs": {"branches": {"choices": ["sub4", "sub24"]}}},
            "search.fidelity: builder 'icnet' with keep_rate < 1 trains in pruning phases",
        ),
        (
            {"knobs": None, "rows": [{"label": "a", "knobs": {"expansion": 2}}]},
            "search.fidelity: multi-fidelity search needs searched knobs",
        ),
    ],
)
def test_bad_fidelity_settings_are_one_line_and_exit_2(in_tmp, capsys, change, message):
    raw = json.loads(json.dumps(TINY))
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "search" else value
    assert cli.main(["run", str(_write(in_tmp, raw)), "--storage", f"sqlite:///{in_tmp / 'x.db'}", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (in_tmp / "x.db").exists()


def test_fidelity_is_off_by_default_and_part_of_the_study_fingerprint(in_tmp):
    from archsearch import spec
    from archsearch.spec.fingerprint import differences, fingerprint

    plain = spec.load(_write(in_tmp, {**TINY, "search": {"seed": 0}}))
    assert plain.search.fidelity is None and fidelity.rung_budgets(plain) is None
    on = spec.load(_write(in_tmp, {**TINY, "search": {"fidelity": {}}}, "on.yaml"))
    assert (on.search.fidelity.eta, on.search.fidelity.rungs) == (3, 3) and fidelity.rung_budgets(on) == [1, 3, 9]
    assert "fidelity" not in fingerprint(plain)  # studies made before the key keep their fingerprint
    assert differences(fingerprint(plain), fingerprint(on)) == [
        "fidelity.eta null → 3",
        "fidelity.rungs null → 3",
    ]


@pytest.mark.slow
def test_several_seeds_go_through_the_rungs_together(in_tmp):
    raw = {
        **TINY,
        "name": "seeds",
        "proxy": {**TINY["proxy"], "iterations": 3, "seeds": 2},
        "search": {"sampler": "random", "seed": 1, "fidelity": {"eta": 3, "rungs": 2}},
    }
    url = f"sqlite:///{in_tmp / 's.db'}"
    assert cli.main(["run", str(_write(in_tmp, raw)), "--storage", url, "--trials", "1", "-q"]) == 0
    (t,) = optuna.load_study(study_name="seeds", storage=url).get_trials()
    rungs = t.user_attrs["rungs"]
    assert [r["iterations"] for r in rungs] == [1, 3] and all(r["miou_std"] is not None for r in rungs)
    assert len(t.user_attrs["miou_seeds"]) == 2 and rungs[-1]["miou"] == t.user_attrs["miou"]
    assert rungs[-1]["miou"] == pytest.approx(sum(t.user_attrs["miou_seeds"]) / 2)
