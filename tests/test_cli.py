"""End to end: `archsearch run` on synthetic data with a tiny proxy, resume, Pareto export, and errors."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from archsearch import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "data.name=synthetic",
    "--set",
    "data.train_images=4",
    "--set",
    "data.val_images=2",
    "--set",
    "proxy.iterations=2",
    "--set",
    "proxy.batch=2",
    "--set",
    "proxy.scale=0.0625",
    "--set",
    "target.input=[1,3,64,128]",
    "--set",
    "target.repeats=2",
    "--set",
    "target.warmup=1",
    "--set",
    "target.device=cpu",  # the CPU is meant (auto would be CUDA on a GPU host)
]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _dominated(a, b, signs):
    """b dominates a."""
    return all(s * y >= s * x for x, y, s in zip(a, b, signs, strict=False)) and any(
        s * y > s * x for x, y, s in zip(a, b, signs, strict=False)
    )


@pytest.mark.slow
def test_run_resume_and_pareto(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'X.db'}"
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    assert cli.main(["run", spec_file, "--storage", url, "--trials", "2", "-q", *TINY]) == 0
    out = capsys.readouterr().out
    # the end of a run shows the front as a short table
    assert "Pareto front (miou ↑, latency_ms ↓): " in out and "trial  knobs" in out and "latency ms" in out
    study = optuna.load_study(study_name="ndnet", storage=url)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 2
    for t in complete:
        assert len(t.values) == 2
        assert t.values[0] == t.user_attrs["miou"] and t.values[1] == t.user_attrs["latency_ms"]
        for attr in (
            "params",
            "madds",
            "latency_ms",
            "latency_p90_ms",
            "device",
            "input_size",
            "miou",
            "pixel_acc",
            "mean_acc",
            "iou_per_class",
            "train_seconds",
            "checkpoint",
            "knobs",
        ):
            assert attr in t.user_attrs, attr
        assert set(t.user_attrs["knobs"]) == {"widths", "depths", "expansion"}
        assert Path(t.user_attrs["checkpoint"]).is_file()
        assert len(t.user_attrs["iou_per_class"]) == 19

    # Same command with --trials 3 resumes and adds exactly one trial.
    assert cli.main(["run", spec_file, "--storage", url, "--trials", "3", "-q", *TINY]) == 0
    study = optuna.load_study(study_name="ndnet", storage=url)
    assert len(study.get_trials()) == 3
    # Asking again for 3 runs nothing.
    assert cli.main(["run", spec_file, "--storage", url, "--trials", "3", "-q", *TINY]) == 0
    assert len(optuna.load_study(study_name="ndnet", storage=url).get_trials()) == 3

    # Pareto rows equal the non-dominated COMPLETE trials, rebuilt from the storage alone.
    out = in_tmp / "front"
    assert cli.main(["pareto", spec_file, "--storage", url, "--out", str(out)]) == 0
    front = pd.read_csv(out / "ndnet_pareto.csv")
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    signs = [1, -1]
    expected = {t.number for t in trials if not any(_dominated(t.values, o.values, signs) for o in trials)}
    assert set(front["number"]) == expected
    assert {"ndnet_pareto.json", "ndnet_pareto.md", "ndnet_pareto.png"} <= {p.name for p in out.iterdir()}
    records = json.loads((out / "ndnet_pareto.json").read_text())
    assert {r["number"] for r in records} == expected


@pytest.mark.slow
def test_eval_a_trial_checkpoint(in_tmp, capsys):
    url = f"sqlite:///{in_tmp / 'E.db'}"
    assert cli.main(["run", str(ROOT / "spaces" / "ndnet.yaml"), "--storage", url, "--trials", "1", "-q", *TINY]) == 0
    (t,) = optuna.load_study(study_name="ndnet", storage=url).get_trials()
    capsys.readouterr()
    # data set and scale from the checkpoint, the image count from the run's spec.yaml beside checkpoints/
    assert cli.main(["eval", t.user_attrs["checkpoint"], "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # the same images, weights and scale as the trial's own evaluation: the same mIoU
    assert f"mIoU {100 * t.user_attrs['miou']:.2f}%" in out
    assert "on synthetic/val (2 images, scale 0.0625; data settings from" in out
    assert "road" in out and "bicycle" in out
    assert cli.main(["eval", t.user_attrs["checkpoint"], "--data", "camvid", "--root", "x"]) == 2


@pytest.mark.slow
def test_latency_gate_prunes_before_training(in_tmp):
    url = f"sqlite:///{in_tmp / 'G.db'}"
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
    assert cli.main(args) == 1  # no trial completed: a failing exit status
    (t,) = optuna.load_study(study_name="ndnet", storage=url).get_trials()
    assert t.state == optuna.trial.TrialState.PRUNED
    assert "latency_ms" in t.user_attrs and "train_seconds" not in t.user_attrs
    assert t.user_attrs["pruned_reason"].startswith("latency_ms")


@pytest.mark.slow
def test_failed_trial_is_recorded_and_the_study_goes_on(in_tmp, monkeypatch):
    from archsearch.training import train

    calls = {"n": 0}
    real_fit = train.fit

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise train.TrainingDiverged("loss is nan at iteration 1 of 2")
        return real_fit(*a, **k)

    monkeypatch.setattr(train, "fit", flaky)
    url = f"sqlite:///{in_tmp / 'F.db'}"
    assert cli.main(["run", str(ROOT / "spaces" / "ndnet.yaml"), "--storage", url, "--trials", "2", "-q", *TINY]) == 0
    trials = optuna.load_study(study_name="ndnet", storage=url).get_trials()
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert "TrainingDiverged: loss is nan" in trials[0].user_attrs["fail_reason"]


@pytest.mark.slow
def test_row_study_and_table(in_tmp):
    url = f"sqlite:///{in_tmp / 'T.db'}"
    spec_file = str(ROOT / "studies" / "ndnet_table2.yaml")
    assert cli.main(["run", spec_file, "--storage", url, "--trials", "2", "-q", *TINY]) == 0
    out = in_tmp / "table"
    assert cli.main(["table", spec_file, "--storage", url, "--out", str(out)]) == 0
    table = pd.read_csv(out / "ndnet_table2_table.csv")
    assert len(table) == 7  # every row listed, run or not


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "missing.yaml"], "missing.yaml: no such spec file"),
        (["run", "SPEC", "--set", "proxy.bogus=1"], "proxy.bogus: unknown key"),
        (["run", "SPEC", "--set", "knobs.expansion={choices: [2, 99]}"], "knobs.expansion: 99 is not allowed"),
        (["run", "SPEC", "--storage", "nonsense"], "'nonsense' is not an SQLAlchemy URL"),
        (
            ["run", "SPEC", "--set", "data.name=camvid", "--set", "data.root=/nonexistent/camvid"],
            "data.root: /nonexistent/camvid does not exist",
        ),
        (["pareto", "SPEC", "--storage", "sqlite:///empty.db"], "no study named 'ndnet'"),
        (["profile", "ndnet", "--set", "expansion=0"], "knob 'expansion': 0 is not allowed"),
        (["eval", "nothing.pt", "--data", "synthetic"], "nothing.pt: no such checkpoint"),
    ],
)
def test_bad_input_exits_2_with_one_line(in_tmp, capsys, argv, message):
    argv = [str(ROOT / "spaces" / "ndnet.yaml") if a == "SPEC" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archsearch: error: ") and message in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_console_script_error_has_no_traceback(in_tmp):
    proc = subprocess.run([sys.executable, "-m", "archsearch.cli", "run", "nope.yaml"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "archsearch: error: nope.yaml: no such spec file"
    assert "Traceback" not in proc.stderr
