"""Spec loading: validation, overrides, ${VAR} expansion, and one-line errors."""

from pathlib import Path

import pytest
import yaml

from archsearch import space, spec
from archsearch.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted([*ROOT.glob("spaces/*.yaml"), *ROOT.glob("studies/*.yaml")])


def write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"name": "t", "builder": "ndnet", "knobs": {"expansion": {"choices": [2, 4]}}}


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_every_shipped_spec_validates(path):
    s = spec.load(path)
    assert s.name and (s.knobs or s.rows)
    assert s.objectives


def test_defaults_and_overrides(tmp_path):
    s = spec.load(write(tmp_path, BASE), ["target.input=[1,3,256,512]", "proxy.iterations=7", "data.name=camvid",
                                          "data.root=/x"])
    assert s.target.input == (1, 3, 256, 512)
    assert s.proxy.iterations == 7 and s.proxy.batch == spec.ProxySpec().batch
    assert s.data.name == "camvid"
    assert [o.direction for o in s.objectives] == ["maximize", "minimize"]


def test_env_expansion_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMVID_HOME", "/data/camvid")
    s = spec.load(write(tmp_path, {**BASE, "data": {"name": "camvid", "root": "${CAMVID_HOME}/sets"}}))
    assert s.data.root == "/data/camvid/sets"
    monkeypatch.delenv("CAMVID_HOME")
    with pytest.raises(SpecError, match="data.root: environment variable CAMVID_HOME is not set"):
        spec.load(write(tmp_path, {**BASE, "data": {"name": "camvid", "root": "${CAMVID_HOME}"}}))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"bogus": 1}, "bogus: unknown key; allowed: name, builder"),
        ({"proxy": {"iters": 3}}, "proxy.iters: unknown key; allowed: iterations"),
        ({"builder": "nope"}, "builder: 'nope' is not a builder; allowed:"),
        ({"knobs": {"expansion": {"choices": [2, 40]}}}, "knobs.expansion: 40 is not allowed; allowed: in \\[1, 8\\]"),
        ({"knobs": {"widths": {"int": [1, 3]}}}, "knobs.widths: 1 is not allowed; allowed: a list of length 3"),
        ({"knobs": {"nope": {"choices": [1]}}}, "knobs.nope: unknown knob for builder 'ndnet'; allowed: widths"),
        ({"knobs": {"expansion": {"range": [1, 2]}}}, "knobs.expansion: expected a declaration with one of"),
        ({"data": {"name": "kitti"}}, "data.name: 'kitti' is not allowed; allowed: cityscapes, camvid, synthetic"),
        ({"data": {"name": "camvid"}}, "data.root: data set 'camvid' needs a folder"),
        ({"proxy": {"iterations": 0}}, "proxy.iterations: 0 must be > 0"),
        ({"proxy": {"batch": "many"}}, "proxy.batch: expected an integer"),
        ({"target": {"device": "tpu"}}, "target.device: 'tpu' is not allowed; allowed: auto, cpu, cuda"),
        ({"target": {"madds_convention": "fvcore"}},
         "target.madds_convention: 'fvcore' is not allowed; allowed: conv_linear, wu2017"),
        ({"search": {"sampler": "cmaes"}}, "search.sampler: 'cmaes' is not allowed; allowed: tpe, nsga2, random, grid"),
        ({"objectives": [{"name": "speed", "direction": "maximize"}]}, "objectives\\[0\\].name: 'speed' is not allowed"),
        ({"constraints": {"miou": {"max": 1}}}, "constraints.miou: 'miou' is not allowed; allowed: latency_ms"),
        ({"storage": "not a url"}, "storage: 'not a url' is not an SQLAlchemy URL"),
        ({"rows": [{"knobs": {"expansion": 2}}]}, "rows: a spec has either knobs"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, change, message):
    p = write(tmp_path, {**BASE, **change})
    with pytest.raises(SpecError, match=message) as info:
        spec.load(p)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(str(p))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        spec.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML at line"):
        spec.load(bad)


def test_rows_knob_validation_names_the_row(tmp_path):
    data = {"name": "t", "builder": "ndnet", "rows": [{"label": "a", "knobs": {"depths": [1, 2]}}]}
    with pytest.raises(SpecError, match=r"rows\[0\].knobs.depths"):
        spec.load(write(tmp_path, data))


def test_space_suggests_lists_and_per_element_knobs():
    import optuna

    s = spec.parse(
        {
            "name": "t",
            "builder": "ndnet",
            "fixed": {"expansion": 2},
            "knobs": {"widths": {"choices": [[8, 16, 32], [12, 24, 48]]}, "depths": {"each": [{"int": [1, 3]}, [2, 4], {"int": [1, 2]}]}},
        },
        file="inline",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        t = study.ask()
        knobs, row = space.sample(t, s)
        assert row is None and knobs["expansion"] == 2
        assert knobs["widths"] in ([8, 16, 32], [12, 24, 48])
        assert 1 <= knobs["depths"][0] <= 3 and knobs["depths"][1] in (2, 4)
        assert set(t.params) == {"widths", "depths[0]", "depths[1]", "depths[2]"}
    assert space.size(s) == 2 * 3 * 2 * 2


def test_paper_values_in_exponent_notation_are_numbers(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nbuilder: ndnet\nrows:\n  - label: a\n    paper: {madds: 123.0e9, note: wide}\n")
    # any value in exponent notation; not a paper's number (those are written once, in the builders; issue 9)
    (row,) = spec.load(p).rows
    assert row["paper"] == {"madds": 123.0e9, "note": "wide"}
