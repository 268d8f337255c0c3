"""Bad input on the command line: one line naming the problem, exit status 2, no file written, the study intact.

A small stored study (two COMPLETE trials written with Optuna directly, no training) stands for a finished run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import IntDistribution
from optuna.trial import TrialState, create_trial

from archsearch import builders, cli
from archsearch.cli import model_commands

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "spaces" / "ndnet.yaml")
ROWS_SPEC = str(ROOT / "studies" / "ndnet_table2.yaml")
STORED_SPEC = {"name": "ndnet", "data": {"name": "synthetic"}, "proxy": {"scale": 0.125}}


def _attrs(miou: float, latency: float, knobs: dict, **extra: object) -> dict:
    return {
        "params": 388_000,
        "madds": 1.13e9,
        "latency_ms": latency,
        "latency_p90_ms": latency,
        "device": "cpu",
        "input_size": [1, 3, 256, 512],
        "dtype": "float32",
        "miou": miou,
        "pixel_acc": 0.8,
        "mean_acc": 0.3,
        "knobs": knobs,
        "checkpoint": "S/checkpoints/trial_00000.pt",
        **extra,
    }


def _store(url: str, name: str, rows: bool = False) -> None:
    study = optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("spec", dict(STORED_SPEC, name=name))
    study.set_metric_names(["miou", "latency_ms"])  # as archsearch.search.session stores the objective names (issue 9)
    for i, (miou, ms, e) in enumerate([(0.40, 6043.2, 4), (0.30, 3000.0, 2), (0.20, 4000.0, 2)]):
        knobs = {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": e}
        extra = {"row": i + 1, "row_label": ["NDNet29", "NDNet29 (e=2)", "NDNet45"][i]} if rows else {}
        study.add_trial(
            create_trial(
                values=[miou, ms],
                user_attrs=_attrs(miou, ms, knobs, **extra),
                params={"e": e},
                distributions={"e": IntDistribution(2, 4)},
            )
        )


@pytest.fixture(scope="module")
def databases(tmp_path_factory) -> dict[str, bytes]:
    """S.db with the study 'ndnet' and T.db with the row study 'ndnet_table2', made once (as bytes)."""
    folder = tmp_path_factory.mktemp("db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _store(f"sqlite:///{folder / 'S.db'}", "ndnet")
    _store(f"sqlite:///{folder / 'T.db'}", "ndnet_table2", rows=True)
    return {name: (folder / name).read_bytes() for name in ("S.db", "T.db")}


@pytest.fixture()
def stored(tmp_path, monkeypatch, databases):
    """A fresh folder holding copies of S.db and T.db and a plain file ``afile``; cwd is it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    for name, data in databases.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "afile").write_text("not a folder\n")
    return tmp_path


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_exit_2(capsys, argv: list[str], message: str) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("archsearch: error: ") and message in err, err
    assert "Traceback" not in captured.err + captured.out
    return err


TINY = [
    "--set",
    "data.train_images=2",
    "--set",
    "data.val_images=1",
    "--set",
    "proxy.iterations=1",
    "--set",
    "proxy.batch=1",
    "--set",
    "proxy.scale=0.0625",
    "--set",
    "target.input=[1,3,64,128]",
    "--set",
    "target.repeats=1",
    "--set",
    "target.warmup=0",
    "--set",
    "target.device=cpu",  # the CPU is meant (auto would be CUDA on a GPU host)
]


@pytest.mark.parametrize(
    "argv,message",
    [
        # a storage path whose parent is a file
        (["run", SPEC, "--storage", "sqlite:///afile/x.db", *TINY], "storage sqlite:///afile/x.db: afile is a file"),
        # an unwritable --out: refused before any trial runs (the study already has 3 trials: ask for a 4th)
        (
            ["run", SPEC, "--storage", "sqlite:///S.db", "--trials", "4", "--out", "afile/out", *TINY],
            "--out afile/out: afile is a file, not a folder",
        ),
        (
            ["pareto", SPEC, "--storage", "sqlite:///S.db", "--out", "afile"],
            "--out afile: afile is a file, not a folder",
        ),
        (["table", ROWS_SPEC, "--storage", "sqlite:///T.db", "--out", "afile/x"], "afile is a file, not a folder"),
        # a place where no folder can be made although its permission bits (for root) say writable
        (
            ["run", SPEC, "--storage", "sqlite:///S.db", "--trials", "4", "--out", "/proc/x", *TINY],
            "--out /proc/x: cannot make a folder in /proc",
        ),
        (["pareto", SPEC, "--storage", "sqlite:///S.db", "--out", "/proc/x/y"], "--out /proc/x/y: cannot make a"),
        # several workers: devices this machine or the spec cannot have
        (["run", SPEC, "--storage", "sqlite:///S.db", "--devices", "gpu0"], "--devices gpu0: gpu0 is not a device"),
        (["run", SPEC, "--storage", "sqlite:///S.db", "--devices", "cuda:99"], "--devices cuda:99: this machine has"),
        (
            ["run", SPEC, "--storage", "sqlite:///S.db", "--devices", "cuda:0", "--set", "target.device=cpu"],
            "--devices cuda:0: the spec's target.device is cpu; allowed: cpu",
        ),
        # num_classes below the data set's classes (every trial would fail with an IndexError)
        (
            ["run", SPEC, "--storage", "sqlite:///S.db", "--set", "num_classes=5"],
            "num_classes: 5 is below the 19 classes of data set 'synthetic'",
        ),
        (["run", SPEC, "--set", "data.size=[0, 0]"], "data.size: [0, 0]: expected [H, W] > 0"),
        # a study name that would write outside runs/, an over-long one (blamed on the name, not --storage)
        (["run", SPEC, "--set", "name=.."], "name: '..': use letters, digits"),
        (["run", SPEC, "--set", "name=" + "n" * 300], "name: 300 characters; at most 100"),
        # a folder given as spec
        (["run", "."], ".: is a folder; expected a spec YAML file"),
        # reports on a misspelled study: no empty database left behind, the existing one untouched
        (["pareto", SPEC, "--set", "name=ndnett"], "no study named 'ndnett' (no such file runs/ndnett.db)"),
        (
            ["pareto", SPEC, "--set", "name=ndnett", "--storage", "sqlite:///S.db"],
            "no study named 'ndnett' (studies there: ndnet)",
        ),
        (["table", ROWS_SPEC, "--storage", "sqlite:///T2.db"], "no study named 'ndnet_table2' (no such file T2.db)"),
        # option values
        (["eval", "x.pt", "--batch", "0"], "argument --batch: 0; allowed: ≥ 1"),
        (["eval", "x.pt", "--scale", "0"], "argument --scale: 0; allowed: a number > 0"),
        (["profile", "ndnet", "--repeats", "0"], "argument --repeats: 0; allowed: ≥ 1"),
        (["profile", "ndnet", "--warmup", "-1"], "argument --warmup: -1; allowed: ≥ 0"),
        (["profile", "ndnet", "--classes", "0"], "argument --classes: 0; allowed: ≥ 1"),
        # --set items, one parser for spec keys and knobs (spec.parse_assignment)
        (["profile", "ndnet", "--set", "expansion"], "--set 'expansion': expected KEY=VALUE, e.g. --set expansion=2"),
        (["profile", "ndnet", "--set", "widths=[16, 32"], "--set widths: value '[16, 32' is not valid YAML"),
        (["run", SPEC, "--set", "proxy.lr"], "ndnet.yaml: --set 'proxy.lr': expected KEY=VALUE"),
        (["run", SPEC, "--trials", "0"], "argument --trials: 0; allowed: ≥ 1"),
        (["run"], "the following arguments are required: spec"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(stored, capsys, argv, message):
    before = _snapshot(stored)
    _one_line_exit_2(capsys, argv, message)
    assert _snapshot(stored) == before  # no file written, both stored studies byte for byte intact


@pytest.mark.slow
def test_eval_of_weights_that_do_not_fit_the_builder(stored, capsys):
    model = builders.build("ndnet", 19, expansion=4)
    torch.save(
        {
            "builder": "ndnet",
            "knobs": {**builders.config_of(model).knobs.as_dict(), "expansion": 2},
            "num_classes": 19,
            "data": "synthetic",
            "scale": 0.0625,
            "state_dict": model.state_dict(),
        },
        stored / "bad.pt",
    )
    before = _snapshot(stored)
    _one_line_exit_2(
        capsys, ["eval", "bad.pt"], "bad.pt: its weights do not fit builder 'ndnet' with its knobs (size mismatch"
    )
    assert _snapshot(stored) == before


@pytest.mark.slow
def test_reports_never_write_to_the_study(stored, capsys):
    """pareto and table read the study: the database is byte for byte the same, even with a spec that differs
    from the stored one; their exports go to --out."""
    dbs = {name: (stored / name).read_bytes() for name in ("S.db", "T.db")}
    assert cli.main(["pareto", SPEC, "--storage", "sqlite:///S.db", "--out", "rep", "--set", "proxy.iterations=7"]) == 0
    assert cli.main(["table", ROWS_SPEC, "--storage", "sqlite:///T.db", "--out", "rep", "--set", "proxy.lr=0.5"]) == 0
    assert {name: (stored / name).read_bytes() for name in dbs} == dbs
    study = optuna.load_study(study_name="ndnet", storage="sqlite:///S.db")
    assert study.user_attrs["spec"] == STORED_SPEC
    assert {p.name for p in (stored / "rep").iterdir()} == {
        "ndnet_pareto.csv",
        "ndnet_pareto.json",
        "ndnet_pareto.md",
        "ndnet_pareto.png",
        "ndnet_table2_table.csv",
        "ndnet_table2_table.md",
    }


@pytest.mark.slow
def test_pareto_prints_a_readable_front_of_at_most_8_columns(stored, capsys):
    assert cli.main(["pareto", SPEC, "--storage", "sqlite:///S.db", "--out", "rep"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "Pareto front (miou ↑, latency_ms ↓): 2 of 3 finished trials"
    # how far its mIoU can be trusted: ndnet.yaml's calibration is on CamVid, this run on synthetic scenes
    assert lines[1].startswith("uncalibrated: the calibration is on camvid train→val, this study on synthetic")
    del lines[1]
    table = lines[1:4]  # header and the two front trials
    import re

    cells = [re.split(r"\s{2,}", line.strip()) for line in table]
    assert all(len(c) == len(cells[0]) <= 8 for c in cells)
    # headers from the record's labels and units (issue 9; were "params M" and "GMAdds")
    assert cells[0] == ["trial", "knobs", "mIoU %", "latency ms", "parameters M", "multiply-adds G"]
    assert cells[1] == ["1", "expansion=2", "30.0", "3000", "0.388", "1.13"]
    assert cells[2] == ["0", "expansion=4", "40.0", "6043", "0.388", "1.13"]  # plain ms, not 6.04e+03
    assert lines[4] == "measured: latency on cpu · input 1×3×256×512 · float32 · data synthetic at scale 0.125"
    assert "e+0" not in out and "checkpoint" not in out and max(len(line) for line in lines[:5]) <= 100


def test_pareto_of_a_study_without_objective_names_is_one_line(stored, capsys):
    # a study made before archsearch stored the objective names as Optuna metric names (issue 9: no fallback)
    study = optuna.create_study(study_name="ndnet", storage="sqlite:///U.db", directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["miou", "latency_ms"])
    study.add_trial(
        create_trial(
            values=[0.4, 10.0],
            user_attrs=_attrs(0.4, 10.0, {"expansion": 2}),
            params={"e": 2},
            distributions={"e": IntDistribution(2, 4)},
        )
    )
    before = _snapshot(stored)
    _one_line_exit_2(
        capsys,
        ["pareto", SPEC, "--storage", "sqlite:///U.db", "--out", "rep"],
        "study 'ndnet' stores no objective names (Optuna metric names)",
    )
    assert _snapshot(stored) == before  # no export written


@pytest.mark.slow
def test_table_fits_a_terminal_and_compares_like_with_like(stored, capsys):
    assert cli.main(["table", ROWS_SPEC, "--storage", "sqlite:///T.db", "--out", "rep"]) == 0
    out = capsys.readouterr().out
    assert "measured: latency on cpu · input 1×3×256×512 · float32 · data synthetic at scale 0.125" in out
    # fps at 256×512 is not put beside the paper's 1024×2048 fps
    assert "fps: not compared with the paper, measured at 256×512 (paper 1024×2048)" in out
    assert "fps (paper)" not in out and "parameters M (paper)" in out  # the record's label (issue 9)
    assert max(len(line) for line in out.splitlines() if not line.startswith("wrote ")) <= 100


def test_global_options_anywhere_version_and_documented_defaults(stored, capsys):
    import archsearch

    for argv in (["--version"], ["builders", "--version"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"archsearch {archsearch.__version__}"
    assert cli.main(["builders", "-v"]) == 0 and cli.main(["-v", "builders"]) == 0
    assert cli.parser().parse_args(["-v", "builders"]).verbose is True
    assert cli.parser().parse_args(["builders", "-v"]).verbose is True
    assert cli.parser().parse_args(["builders"]).verbose is False
    # one device default everywhere
    assert cli.parser().parse_args(["profile", "ndnet"]).device == "auto"
    assert cli.parser().parse_args(["eval", "x.pt"]).device == "auto"
    # every option of every verb says what it does and, when it takes a value, its default
    sub = next(a for a in cli.parser()._actions if a.dest == "verb")
    for verb, q in sub.choices.items():
        for action in q._actions:
            if action.dest in ("help", "version"):
                continue
            assert action.help, (verb, action.dest)
            if action.option_strings and action.nargs != 0:
                assert "default" in action.help, (verb, action.dest)


def test_builders_lists_allowed_values_within_100_columns(capsys):
    assert cli.main(["builders"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "  expansion: default 4; allowed: in [1, 8]" in out
    assert "  widths: default [16, 32, 64]; allowed: a list of length 3; items in [1, 1024]" in out


@pytest.mark.slow
def test_run_exits_1_when_no_trial_completed(stored, capsys, monkeypatch):
    from archsearch.training import train

    def diverge(*a, **k):
        raise train.TrainingDiverged("loss is nan at iteration 1 of 1")

    monkeypatch.setattr(train, "fit", diverge)
    assert cli.main(["run", SPEC, "--storage", "sqlite:///F.db", "--trials", "1", "-q", *TINY]) == 1
    err = capsys.readouterr().err
    assert "no trial of 'ndnet' completed (1 FAIL)" in err
    (t,) = optuna.load_study(study_name="ndnet", storage="sqlite:///F.db").get_trials()
    assert t.state == TrialState.FAIL


def test_set_items_are_parsed_by_one_function():
    from archsearch.spec import parse_assignment
    from archsearch.util.errors import SpecError

    assert parse_assignment("proxy.lr=1e-3") == ("proxy.lr", 0.001)  # YAML 1.2 numbers (PyYAML alone: a string)
    assert parse_assignment(" widths = [16, 32, 64]") == ("widths", [16, 32, 64])
    assert parse_assignment("data.root=") == ("data.root", None)
    assert parse_assignment("name=a=b") == ("name", "a=b")
    with pytest.raises(SpecError, match=r"^--set 'expansion': expected KEY=VALUE, e.g. --set expansion=2$"):
        parse_assignment("expansion", example="expansion=2")
    # the command's knob overrides go through it (cli._knob_overrides)
    assert model_commands._knob_overrides(["expansion=2", "widths=[16, 32, 64]"]) == {
        "expansion": 2,
        "widths": [16, 32, 64],
    }
