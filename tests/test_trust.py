"""Every front says how far its mIoU can be trusted: the spec's ``calibration:`` key, the calibration file
``archsearch calibrate`` writes, the statement in each of its branches, and the statement in run, pareto and the
exports."""

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from archsearch import calibrate as cal
from archsearch import cli
from archsearch import spec as spec_mod
from archsearch.report import ablation_table, front_table, table_text, trust
from archsearch.spec.fingerprint import fingerprint
from archsearch.util.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
NDNET = ROOT / "spaces" / "ndnet.yaml"
CAMVID = ["data.name=camvid", "data.root=/nowhere/camvid", "proxy.iterations=150", "proxy.scale=0.5"]
NO_CALIBRATION = "calibration=null"  # ndnet.yaml names its CamVid calibration


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _row(label, *, top=False, tau=None, lo=None, hi=None, noise=0.018, spread=0.016, archs=10):
    iterations, scale = label.split("x")
    return {
        "label": label,
        "iterations": int(iterations),
        "scale": float(scale),
        "trained": True,
        "top": top,
        "cost": 1.0,
        "runs": 20,
        "archs": archs,
        "tau": 1.0 if top else tau,
        "tau_lo": lo,
        "tau_hi": hi,
        "rho": 1.0 if top else tau,
        "rho_lo": lo,
        "rho_hi": hi,
        "seed_noise": noise,
        "spread": spread,
    }


def _calibration(spec, **over):
    """A hand-made calibration of ``spec``'s data set and recipe: 50x0.5, 150x0.5 and the top 600x0.5."""
    raw = {
        "format": "archsearch calibration",
        "version": 1,
        "spec": spec.name,
        "builders": ["ndnet"],
        "data": {**trust.data_of(spec, {"train": 367, "val": 101}).model_dump(mode="json")},
        "proxy": trust.recipe_of(spec),
        "top": "600x0.5",
        "architectures": 10,
        "seeds": 2,
        "top_seeds": 2,
        "threshold": 0.4,
        "recommended": "150x0.5",
        "recommendation": "Recommended proxy: 150x0.5",
        "fidelities": [
            _row("50x0.5", tau=0.2, lo=-0.3, hi=0.6),
            _row("150x0.5", tau=0.71, lo=0.45, hi=0.90),
            _row("600x0.5", top=True),
        ],
    }
    raw.update(over)
    return raw


def _write(path, raw):
    path.write_text(json.dumps(raw))
    return path


def _spec_with(tmp, raw_cal, sets=CAMVID, name="cal.json"):
    """A spec file in ``tmp`` extending ndnet.yaml and naming ``name`` (relative to it) as its calibration."""
    base = spec_mod.load(NDNET, sets)
    _write(tmp / name, raw_cal(base) if callable(raw_cal) else raw_cal)
    spec_file = tmp / "s.yaml"
    spec_file.write_text(f"base: {NDNET}\ncalibration: {name}\n")
    return spec_mod.load(spec_file, sets)


# ------------------------------------------------------------------------------------------------- statements


def test_matching_proxy_quotes_tau_against_the_top(tmp_path):
    spec = _spec_with(tmp_path, _calibration)
    assert spec.calibration == str(tmp_path / "cal.json")  # relative to the spec file
    assert (
        trust.statement(spec)
        == "mIoU: proxy 150x0.5 on camvid, τ 0.71 [0.45, 0.90] against 600x0.5 over 10 architectures"
    )
    # a lower bound under the calibration's threshold says so, with what the calibration recommends instead
    spec = _spec_with(tmp_path, lambda s: _calibration(s, threshold=0.6, recommended=None))
    assert trust.statement(spec) == (
        "mIoU: proxy 150x0.5 on camvid, τ 0.71 [0.45, 0.90] against 600x0.5 over 10 architectures; lower bound "
        "under 0.6: the calibration recommends 600x0.5"
    )
    # trials that average seeds: the calibration's τ is of one
    spec = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.seeds=3"])
    assert "over 10 architectures (τ of one seed; trials average 3);" in trust.statement(spec)


def test_reference_proxy_gives_seed_noise_and_spread(tmp_path):
    spec = _spec_with(tmp_path, _calibration, sets=[*CAMVID, "proxy.iterations=600"])
    assert trust.statement(spec) == (
        "mIoU: proxy 600x0.5 on camvid is the calibration's reference (seed noise 1.8 points, spread 1.6 points "
        "over 10 architectures); its noise is not below the spread: one run per architecture ranks these "
        "architectures by noise"
    )

    # seed noise as large as the spread: a single run ranks by noise; the mean of 2 seeds (noise / √2) does not
    def noisy(s):
        return _calibration(s, fidelities=[_row("150x0.5", tau=0.7), _row("600x0.5", top=True, noise=0.02)])

    spec = _spec_with(tmp_path, noisy, sets=[*CAMVID, "proxy.iterations=600"])
    assert trust.statement(spec) == (
        "mIoU: proxy 600x0.5 on camvid is the calibration's reference (seed noise 2.0 points, spread 1.6 points "
        "over 10 architectures); its noise is not below the spread: one run per architecture ranks these "
        "architectures by noise"
    )
    spec = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.iterations=600", "proxy.seeds=2"])
    assert trust.statement(spec).endswith("spread 1.6 points over 10 architectures)")
    spec = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.iterations=600", "proxy.seeds=1"])
    assert "ranks these architectures by noise" in trust.statement(spec)
    one_seed = lambda s: _calibration(  # noqa: E731
        s, top_seeds=1, fidelities=[_row("150x0.5", tau=0.7, lo=0.5, hi=0.9), _row("600x0.5", top=True, noise=None)]
    )
    spec = _spec_with(tmp_path, one_seed, sets=[*CAMVID, "proxy.iterations=600"])
    assert "(seed noise not measured, 1 seed each, spread 1.6 points over 10 architectures)" in trust.statement(spec)


def test_other_data_other_proxy_other_recipe_uncalibrated(tmp_path):
    _spec_with(tmp_path, _calibration)
    where = f"run `archsearch calibrate {tmp_path / 's.yaml'}`"
    synthetic = spec_mod.load(tmp_path / "s.yaml", ["proxy.iterations=150", "proxy.scale=0.5"])
    assert trust.statement(synthetic) == (
        "uncalibrated: the calibration is on camvid train→val (64 train images, 16 val images), this study on "
        "synthetic train→val (64 train images, 16 val images, 1024×2048); " + where
    )
    fewer = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "data.train_images=100"])
    assert trust.statement(fewer).startswith(
        "uncalibrated: the calibration is on camvid train→val (64 train images, 16 val images), this study on "
        "camvid train→val (100 train images, 16 val images);"
    )
    other = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.iterations=100"])
    assert trust.statement(other) == (
        f"uncalibrated: proxy 100x0.5 is not a fidelity of the calibration (50x0.5, 150x0.5, 600x0.5); {where}"
    )
    batch = spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.batch=16"])
    assert (
        trust.statement(batch)
        == f"uncalibrated: the calibration trained with proxy.batch 8, this study with 16; {where}"
    )
    # proxy.workers and proxy.seeds do not change what the calibration measured
    assert trust.statement(spec_mod.load(tmp_path / "s.yaml", [*CAMVID, "proxy.workers=2"])).startswith("mIoU:")
    builders = _spec_with(tmp_path, lambda s: _calibration(s, builders=["fastscnn"]))
    assert trust.statement(builders).startswith(
        "uncalibrated: the calibration ranked fastscnn architectures, not ndnet;"
    )
    no_tau = _spec_with(
        tmp_path, lambda s: _calibration(s, fidelities=[_row("150x0.5", archs=1), _row("600x0.5", top=True)])
    )
    assert trust.statement(no_tau).startswith("uncalibrated: the calibration has no τ for 150x0.5")


def test_no_calibration_and_the_stored_statement(tmp_path):
    spec = spec_mod.load(NDNET, [*CAMVID, NO_CALIBRATION])
    assert spec.calibration is None
    assert trust.statement(spec) == f"uncalibrated: run `archsearch calibrate {NDNET}`"
    assert trust.statement() == "uncalibrated: run `archsearch calibrate SPEC`"
    # what `run` stored is what a report says, where the spec names no file or its file is not on this machine
    study = optuna.create_study()
    study.set_user_attr(trust.ATTR, "mIoU: stored")
    assert trust.statement(spec, study) == trust.statement(study=study) == "mIoU: stored"
    named = _spec_with(tmp_path, _calibration)
    (tmp_path / "cal.json").unlink()
    assert trust.statement(named, study) == "mIoU: stored"
    with pytest.raises(SpecError, match="no such file"):
        trust.statement(named)  # nothing stored: the missing file is an error


# ------------------------------------------------------------------------------------------------- the spec key


def test_calibration_key_paths_and_what_it_does_not_change(tmp_path, monkeypatch):
    monkeypatch.setenv("CALDIR", str(tmp_path / "c"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text(f"base: {NDNET}\ncalibration: ../c/cal.json\n")
    (tmp_path / "s.yaml").write_text("base: sub/base.yaml\n")
    # a base file's path is relative to the base file
    assert spec_mod.load(tmp_path / "s.yaml").calibration == str(tmp_path / "c" / "cal.json")
    (tmp_path / "v.yaml").write_text(f"base: {NDNET}\ncalibration: ${{CALDIR}}/cal.json\n")
    assert spec_mod.load(tmp_path / "v.yaml").calibration == str(tmp_path / "c" / "cal.json")
    # metadata: neither the study's fingerprint nor calibrate's recipe changes with it
    with_cal, without = spec_mod.load(tmp_path / "v.yaml"), spec_mod.load(NDNET, [NO_CALIBRATION])
    assert fingerprint(with_cal) == fingerprint(without)
    assert cal.recipe(with_cal) == cal.recipe(without)
    assert spec_mod.to_dict(with_cal)["calibration"] == str(tmp_path / "c" / "cal.json")
    assert "calibration" not in spec_mod.to_dict(without)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cal.json: no such file; expected the calibration.json that `archsearch calibrate SPEC` writes"),
        ("folder", "is a folder; expected the calibration.json"),
        ("{not json", "not JSON (line 1, column 2"),
        ('{"format": "archsearch pareto"}', 'not a calibration file (no "format": "archsearch calibration")'),
        ('{"format": "archsearch calibration", "spec": "x"}', "builders: Field required"),
        ("version", "version 2 is newer than this archsearch reads (1)"),
        ("top", "top '1x1' is none of the fidelities"),
    ],
)
def test_bad_calibration_file_is_one_line_exit_2(in_tmp, capsys, content, message):
    spec = spec_mod.load(NDNET, CAMVID)
    path = in_tmp / "cal.json"
    if content == "folder":
        path.mkdir()
    elif content in ("version", "top"):
        _write(path, _calibration(spec, **({"version": 2} if content == "version" else {"top": "1x1"})))
    elif content is not None:
        path.write_text(content)
    (in_tmp / "s.yaml").write_text(f"base: {NDNET}\ncalibration: cal.json\n")
    url = f"sqlite:///{in_tmp / 'R.db'}"
    code = cli.main(["run", str(in_tmp / "s.yaml"), "--storage", url, "-q", "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{in_tmp / 's.yaml'}: calibration: " in err and message in err
    assert not (in_tmp / "R.db").exists()  # refused before the study is created


def test_empty_calibration_key_refused_at_load(tmp_path):
    (tmp_path / "s.yaml").write_text(f'base: {NDNET}\ncalibration: ""\n')
    with pytest.raises(SpecError, match="calibration"):
        spec_mod.load(tmp_path / "s.yaml")


# ---------------------------------------------------------------------------------------------- in the reports

TINY = [
    "data.name=synthetic",
    "data.train_images=4",
    "data.val_images=2",
    "proxy.iterations=2",
    "proxy.batch=2",
    "proxy.scale=0.0625",
    "target.input=[1,3,64,128]",
    "target.repeats=2",
    "target.warmup=1",
]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.mark.slow
def test_run_stores_the_statement_and_pareto_prints_it(in_tmp, capsys):
    spec = spec_mod.load(NDNET, TINY)
    raw = _calibration(
        spec, top="8x0.0625", fidelities=[_row("2x0.0625", tau=0.8, lo=0.5, hi=1.0), _row("8x0.0625", top=True)]
    )
    _write(in_tmp / "cal.json", raw)
    said = "mIoU: proxy 2x0.0625 on synthetic, τ 0.80 [0.50, 1.00] against 8x0.0625 over 10 architectures"
    url = f"sqlite:///{in_tmp / 'X.db'}"
    args = [str(NDNET), "--storage", url, "-q", *_sets([*TINY, f"calibration={in_tmp / 'cal.json'}"])]
    assert cli.main(["run", *args, "--trials", "1", "--out", str(in_tmp / "o")]) == 0
    out = capsys.readouterr().out
    assert f"finished trials\n{said}\n" in out  # under the front's title
    study = optuna.load_study(study_name="ndnet", storage=url)
    assert study.user_attrs[trust.ATTR] == said
    md = (in_tmp / "o" / "ndnet_pareto.md").read_text()
    assert f"\n{said}.\n" in md

    # pareto on "another machine": the file is gone, the study's statement is printed
    (in_tmp / "cal.json").unlink()
    assert cli.main(["pareto", *args, "--out", str(in_tmp / "p")]) == 0
    assert f"finished trials\n{said}\n" in capsys.readouterr().out
    assert f"\n{said}.\n" in (in_tmp / "p" / "ndnet_pareto.md").read_text()
    # and without any calibration: a study that stored none says it is uncalibrated
    study.set_user_attr(trust.ATTR, "")
    bare = _sets([*TINY, NO_CALIBRATION])
    assert cli.main(["pareto", str(NDNET), "--storage", url, "-q", "--out", str(in_tmp / "q"), *bare]) == 0
    assert f"uncalibrated: run `archsearch calibrate {NDNET}`" in capsys.readouterr().out
    assert "uncalibrated: run `archsearch calibrate" in front_table(study)


def test_ablation_table_says_it(tmp_path):
    study = optuna.create_study()
    study.set_user_attr(trust.ATTR, "mIoU: stored")
    table, paths = ablation_table(study, [{"label": "a", "knobs": {}}], tmp_path, "t")
    assert table.attrs["calibration"] == "mIoU: stored"
    assert "\nmIoU: stored.\n" in paths["md"].read_text()
    assert "\nmIoU: stored\n" in table_text(table, "t")
    table, _ = ablation_table(study, [{"label": "a", "knobs": {}}], tmp_path, "t", statement="uncalibrated: x")
    assert "uncalibrated: x" in table_text(table, "t")


@pytest.mark.slow
def test_calibrate_writes_a_calibration_a_spec_can_name(in_tmp, capsys):
    sets = ["data.name=synthetic", "data.train_images=4", "data.val_images=2", "proxy.batch=2", "data.size=[256,512]"]
    url = f"sqlite:///{in_tmp / 'C.db'}"
    args = ["calibrate", str(NDNET), "--storage", url, "--archs", "2", "--top-k", "1", "--out", str(in_tmp / "cal")]
    assert cli.main([*args, "-q", *_sets(sets), "--fidelities", "1x0.125,2x0.25"]) == 0
    assert "calibration.json" in capsys.readouterr().out
    raw = json.loads((in_tmp / "cal" / "calibration.json").read_text())
    assert raw["format"] == "archsearch calibration" and raw["spec"] == "ndnet" and raw["builders"] == ["ndnet"]
    assert raw["data"] == {
        "name": "synthetic",
        "train_split": "train",
        "val_split": "val",
        "train_images": 4,
        "val_images": 2,
        "size": [256, 512],
        "images": {"train": 4, "val": 2},
    }
    assert raw["top"] == "2x0.25" and raw["architectures"] == 2 and raw["seeds"] == 2 and raw["top_seeds"] == 1
    assert raw["proxy"]["batch"] == 2 and "iterations" not in raw["proxy"] and raw["threshold"] == 0.6
    rows = {f["label"]: f for f in raw["fidelities"]}
    assert list(rows) == ["1x0.125", "2x0.25"] and rows["2x0.25"]["top"] and rows["1x0.125"]["runs"] == 4
    assert rows["2x0.25"]["seed_noise"] is None  # one top seed: not measured (null, not NaN)
    # the numbers are the calibration table's: recomputed from the CSV of its runs
    runs = pd.read_csv(in_tmp / "cal" / "calibration.csv")
    table = cal.statistics_table(runs, [cal.Fidelity(1, 0.125), cal.Fidelity(2, 0.25)], cal.Fidelity(2, 0.25), k=1)
    cheap = table.set_index("fidelity").loc["1x0.125"]
    for key in ("tau", "tau_lo", "tau_hi", "rho", "seed_noise", "spread"):
        assert rows["1x0.125"][key] == (None if math.isnan(cheap[key]) else pytest.approx(cheap[key]))
    # a spec that names it: the statement of its proxy, from the file
    spec = spec_mod.load(
        NDNET, [*sets, "proxy.iterations=1", "proxy.scale=0.125", f"calibration={in_tmp}/cal/calibration.json"]
    )
    said = trust.statement(spec)
    if rows["1x0.125"]["tau"] is None:
        assert said.startswith("uncalibrated: the calibration has no τ for 1x0.125")
    else:
        assert said.startswith(f"mIoU: proxy 1x0.125 on synthetic, τ {rows['1x0.125']['tau']:.2f} [")
        assert " against 2x0.25 over 2 architectures" in said
    top = spec_mod.load(
        NDNET, [*sets, "proxy.iterations=2", "proxy.scale=0.25", f"calibration={in_tmp}/cal/calibration.json"]
    )
    assert trust.statement(top).startswith(
        "mIoU: proxy 2x0.25 on synthetic is the calibration's reference (seed noise not"
    )
