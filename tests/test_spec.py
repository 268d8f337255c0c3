"""Spec loading: validation, overrides, ${VAR} expansion, and one-line errors."""

import json
from pathlib import Path

import pytest
import yaml

from archsearch import spec
from archsearch.search import space
from archsearch.spec import metrics
from archsearch.spec.declarations import Choices, Each, IntRange, declaration_values
from archsearch.training.seeds import seed_summary
from archsearch.util.errors import SpecError

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
    # issue 9 item 6: a space over several builders (spaces/cross_paper.yaml) holds its knobs under builders:
    assert s.name and (s.knobs or s.rows or s.builders)
    assert s.objectives


def test_defaults_and_overrides(tmp_path):
    s = spec.load(
        write(tmp_path, BASE), ["target.input=[1,3,256,512]", "proxy.iterations=7", "data.name=camvid", "data.root=/x"]
    )
    assert s.target.input == (1, 3, 256, 512)
    assert s.proxy.iterations == 7 and s.proxy.batch == spec.ProxySpec().batch
    assert s.data.name == "camvid"
    assert [o.direction for o in s.objectives] == ["maximize", "minimize"]


def test_env_expansion_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMVID_HOME", "/data/camvid")
    s = spec.load(write(tmp_path, {**BASE, "data": {"name": "camvid", "root": "${CAMVID_HOME}/sets"}}))
    assert s.data.root == "/data/camvid/sets"
    monkeypatch.delenv("CAMVID_HOME")
    with pytest.raises(SpecError, match=r"data.root: environment variable CAMVID_HOME is not set"):
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
        (
            {"target": {"madds_convention": "fvcore"}},
            "target.madds_convention: 'fvcore' is not allowed; allowed: conv_linear, wu2017",
        ),
        ({"search": {"sampler": "cmaes"}}, "search.sampler: 'cmaes' is not allowed; allowed: tpe, nsga2, random, grid"),
        (
            {"objectives": [{"name": "speed", "direction": "maximize"}]},
            "objectives\\[0\\].name: 'speed' is not allowed",
        ),
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
    with pytest.raises(SpecError, match=r"no such spec file"):
        spec.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"invalid YAML at line"):
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
            "knobs": {
                "widths": {"choices": [[8, 16, 32], [12, 24, 48]]},
                "depths": {"each": [{"int": [1, 3]}, [2, 4], {"int": [1, 2]}]},
            },
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


# -- typed declarations: bad ones exit 2 with one line ----------------------------------------------------------

BAD_DECLARATIONS = [
    # the four of issue 9
    ("expansion: {int: [1, 6], step: 0}", "knobs.expansion.step: 0 must be > 0"),
    (
        "expansion: {float: [1.0, 4.0], log: true, step: 0.01}",
        "knobs.expansion: step 0.01 and log: true cannot be combined",
    ),
    ("expansion: {int: [1, 6], step: two}", "knobs.expansion.step: expected an integer, got 'two'"),
    ("expansion: {float: [1.0, 4.0], log: yes}", "knobs.expansion.log: expected true or false, got 'yes'"),
    # and their neighbours
    ("expansion: {int: [6, 1]}", "knobs.expansion: [6, 1]: expected [low, high] with low ≤ high"),
    ("expansion: {float: [0.0, 4.0], log: true}", "knobs.expansion: log scale needs low > 0, got 0.0"),
    ("expansion: {int: [0, 4], log: true}", "knobs.expansion: log scale needs low ≥ 1, got 0"),
    ("expansion: {int: [2, 4], step: 2, log: true}", "knobs.expansion: step 2 and log: true cannot be combined"),
    ("expansion: {int: [1, 6], by: 2}", "knobs.expansion.by: unknown key; allowed: int, step, log"),
    ("expansion: {choices: []}", "knobs.expansion.choices: expected a non-empty list"),
    ("depths: {each: [{int: [1, 3]}, {float: [1, 2], step: -1}, [2]]}", "knobs.depths.each[1].step: -1 must be > 0"),
]


@pytest.mark.parametrize("declaration,message", BAD_DECLARATIONS, ids=[d for d, _ in BAD_DECLARATIONS])
def test_bad_declarations_exit_2_with_one_line(tmp_path, capsys, declaration, message):
    from archsearch import cli

    p = tmp_path / "bad.yaml"
    p.write_text(f"name: t\nbuilder: ndnet\nknobs:\n  {declaration}\n")
    assert cli.main(["run", str(p)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err + captured.out
    assert err.startswith(f"archsearch: error: {p}: ")
    assert message in err, err


def test_declarations_suggest_enumerate_and_count():
    s = spec.parse(
        {
            "name": "t",
            "builder": "ndnet",
            "knobs": {
                "expansion": {"int": [2, 8], "step": 3},
                "depths": {"each": [{"choices": [3, 4]}, {"int": [8, 12], "step": 4}, [3, 6]]},
            },
        },
        file="inline",
    )
    e, d = s.knobs["expansion"], s.knobs["depths"]
    assert isinstance(e, IntRange) and isinstance(d, Each) and isinstance(d.each[2], Choices)
    assert e.values() == [2, 5, 8] and e.size() == 3 and e.probes() == [2, 8]
    assert d.size() == 2 * 2 * 2 and d.values()[0] == [3, 8, 3] and d.values()[-1] == [4, 12, 6]
    assert d.probes() == [[3, 8, 3], [4, 12, 6]]
    assert space.size(s) == 3 * 8 and len(space.configurations(s)) == 24
    assert set(space.distributions(s)) == {"expansion", "depths[0]", "depths[1]", "depths[2]"}
    f = spec.parse(
        {
            "name": "t",
            "builder": "sparse_two_column",
            "knobs": {"p": {"float": [0.25, 0.5], "step": 0.125}, "lam": {"float": [1e-4, 1e-2], "log": True}},
        },
        file="inline",
    )
    assert f.knobs["p"].values() == [0.25, 0.375, 0.5] and f.knobs["lam"].values() is None
    assert space.size(f) is None and space.configurations(f) is None
    # the YAML mapping view other code reads, and the dump keeps only the keys given
    assert e["int"] == (2, 8) and e.get("step") == 3 and "each" in d and d["each"][1]["int"] == (8, 12)
    assert spec.to_dict(s)["knobs"] == {
        "expansion": {"int": [2, 8], "step": 3},
        "depths": {"each": [{"choices": [3, 4]}, {"int": [8, 12], "step": 4}, {"choices": [3, 6]}]},
    }
    assert declaration_values({"int": [1, 6], "step": 5}) == [1, 6] and declaration_values([2, 4]) == [2, 4]


def test_knob_values_are_still_checked_against_the_builder(tmp_path):
    # the upper end of a stepped range is the last reachable value (1, 8: 9 is never sampled); a bad end is named
    ok = spec.load(write(tmp_path, {**BASE, "knobs": {"expansion": {"int": [1, 9], "step": 7}}}))
    assert ok.knobs["expansion"].values() == [1, 8]
    with pytest.raises(SpecError, match=r"knobs.expansion: 9 is not allowed; allowed: in \[1, 8\]"):
        spec.load(write(tmp_path, {**BASE, "knobs": {"expansion": {"int": [1, 9]}}}))
    with pytest.raises(SpecError, match=r"fixed.expansion: 0 is not allowed"):
        spec.load(write(tmp_path, {**BASE, "fixed": {"expansion": 0}, "knobs": {}}))


# -- base: includes ---------------------------------------------------------------------------------------------


def test_base_merges_mappings_replaces_lists_in_order(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "a.yaml").write_text(
        "builder: ndnet\nfixed: {expansion: 2, widths: [8, 16, 32]}\nproxy: {iterations: 5, batch: 2}\n"
        "objectives: [{name: miou, direction: maximize}, {name: params, direction: minimize}]\n"
    )
    (tmp_path / "common" / "b.yaml").write_text("base: a.yaml\nproxy: {batch: 3, lr: 0.5}\n")
    (tmp_path / "c.yaml").write_text("base: common/b.yaml\n")
    (tmp_path / "s.yaml").write_text(
        "base: [common/b.yaml, c.yaml]\nname: t\nfixed: {widths: [12, 24, 48]}\nproxy: {iterations: 7}\n"
        "objectives: [{name: miou, direction: maximize}]\nrows: [{knobs: {depths: [3, 8, 3]}}]\n"
    )
    s = spec.load(tmp_path / "s.yaml", ["proxy.lr=0.25"])
    assert s.builder == "ndnet"
    assert s.fixed == {"expansion": 2, "widths": [12, 24, 48]}  # mappings merge, a list is replaced whole
    assert (s.proxy.iterations, s.proxy.batch, s.proxy.lr) == (7, 3, 0.25)  # own keys, then bases, then --set
    assert [o.name for o in s.objectives] == ["miou"]
    assert s.path == str(tmp_path / "s.yaml")


def test_base_cycles_and_missing_files_are_one_line(tmp_path, capsys):
    from archsearch import cli

    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: t\nbuilder: ndnet\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(SpecError, match=r"b.yaml: base: 'a.yaml' includes itself: .*a.yaml → .*b.yaml → .*a.yaml"):
        spec.load(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    assert cli.main(["run", str(tmp_path / "self.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base: 'self.yaml' includes itself" in err
    (tmp_path / "m.yaml").write_text("base: nowhere.yaml\nname: t\nbuilder: ndnet\n")
    with pytest.raises(SpecError, match=r"m.yaml: base: 'nowhere.yaml': no such file"):
        spec.load(tmp_path / "m.yaml")
    (tmp_path / "n.yaml").write_text("base: 3\nname: t\nbuilder: ndnet\n")
    with pytest.raises(SpecError, match=r"n.yaml: base: expected a file name or a list of file names, got 3"):
        spec.load(tmp_path / "n.yaml")


def test_wu2017_tables_share_a_base_and_load_as_before():
    """The four Wu et al. studies include studies/_base/wu2017.yaml; each loads to exactly the spec it was
    before (a snapshot of ``to_dict`` taken with main's self-contained files and main's spec module)."""
    before = json.loads((ROOT / "tests" / "data" / "wu2017_tables_before_base.json").read_text())
    assert sorted(before) == [f"wu2017_table{i}.yaml" for i in range(1, 5)]
    for name, expected in before.items():
        assert spec.load_yaml((ROOT / "studies" / name).read_text())["base"] == "_base/wu2017.yaml"
        now = spec.to_dict(spec.load(ROOT / "studies" / name))
        assert now["target"]["madds_convention"] == "wu2017" and now["rows"][0]["variant"]
        assert json.dumps(now) == json.dumps(expected), name  # same keys, values and order


# -- the JSON schema ------------------------------------------------------------------------------------------


def test_schema_command_prints_and_writes_the_json_schema(tmp_path, capsys):
    import jsonschema

    from archsearch import cli

    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert list(schema["properties"]) == [
        "name",
        "builder",
        "fixed",
        "knobs",
        "builders",
        "rows",
        "objectives",
        "constraints",
        "data",
        "proxy",
        "target",
        "search",
        "storage",
        "artifacts",
        "calibration",
        "num_classes",
        "base",
    ]
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    target = schema["$defs"]["TargetSpec"]["properties"]
    assert target["device"]["pattern"] == "^(auto|cpu|cuda(:[0-9]+)?)$"  # cuda:N: a GPU by its index
    assert target["madds_convention"]["enum"] == ["conv_linear", "wu2017"]
    assert target["runtime"]["enum"][0] == "eager" and target["threads"]["default"] == 1
    out = tmp_path / "spec.schema.json"
    assert cli.main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == schema
    # every shipped spec file validates against it; the bad declarations and an unknown objective do not
    validator = jsonschema.Draft202012Validator(schema)
    for path in SPEC_FILES:  # variant rows, base: and builders: included
        assert not list(validator.iter_errors(spec.load_yaml(path.read_text()))), path.name
    for declaration, message in BAD_DECLARATIONS:
        raw = spec.load_yaml(f"name: t\nbuilder: ndnet\nknobs:\n  {declaration}\n")
        # the order of a range's ends is not a JSON schema rule: only the loader checks it
        if "low ≤ high" not in message and "log scale needs" not in message:
            assert list(validator.iter_errors(raw)), declaration
    assert list(validator.iter_errors({**BASE, "objectives": [{"name": "speed", "direction": "maximize"}]}))
    assert list(validator.iter_errors({**BASE, "constraints": {"miou": {"min": 0.5}}}))
    assert list(validator.iter_errors({**BASE, "builder": "nobody"}))


# -- the trial record -----------------------------------------------------------------------------------------


def test_allowed_objectives_and_constraints_come_from_the_record(tmp_path):
    assert metrics.objective_names() == spec.METRICS and metrics.constraint_names() == spec.GATE_METRICS
    assert "flops" in metrics.objective_names() and "flops" in metrics.constraint_names()
    assert "train_seconds" in metrics.objective_names() and "train_seconds" not in metrics.constraint_names()
    assert "iou_per_class" not in metrics.objective_names()
    s = spec.load(
        write(
            tmp_path,
            {
                **BASE,
                "objectives": [{"name": "flops", "direction": "minimize"}],
                "constraints": {"flops": {"max": 1e9}},
            },
        )
    )
    assert [o.name for o in s.objectives] == ["flops"] and s.constraints == {"flops": {"max": 1e9}}
    with pytest.raises(
        SpecError,
        match="objectives\\[1\\].name: 'speed' is not allowed; allowed: " + ", ".join(metrics.objective_names()),
    ):
        spec.load(
            write(
                tmp_path,
                {
                    **BASE,
                    "objectives": [
                        {"name": "miou", "direction": "maximize"},
                        {"name": "speed", "direction": "maximize"},
                    ],
                },
            )
        )
    with pytest.raises(
        SpecError,
        match="constraints.train_seconds: 'train_seconds' is not allowed; allowed: "
        + ", ".join(metrics.constraint_names()),
    ):
        spec.load(write(tmp_path, {**BASE, "constraints": {"train_seconds": {"max": 10}}}))


def test_record_metrics_units_and_objective_values():
    miou, madds = metrics.get("miou"), metrics.get("madds")
    assert (miou.column, miou.shown(0.5), miou.axis_label) == ("miou_pct", 50.0, "mIoU (%)")
    assert (madds.column, madds.shown(2.5e9), metrics.get("latency_ms").column) == ("madds_G", 2.5, "latency_ms")
    assert metrics.fraction_names()[:3] == ("miou", "pixel_acc", "mean_acc")
    assert metrics.objective_values({"miou": 0.4, "latency_ms": 3, "x": "y"}, ["latency_ms", "miou"]) == (3.0, 0.4)
    with pytest.raises(metrics.MissingMetric, match="objective 'flops': this trial recorded no flops"):
        metrics.objective_values({"miou": 0.4}, ["miou", "flops"])
    with pytest.raises(KeyError, match=r"'speed' is not a trial metric"):
        metrics.get("speed")


def test_every_number_a_trial_stores_is_in_the_record():
    """The trial's cost record and seed summary store only metrics the record defines (besides the descriptive
    fields of the cost: device, input, dtype, runtime …)."""
    from archsearch.search import trial

    descriptive = {"device", "input_size", "dtype", "threads", "fold_bn", "runtime", "runtime_version"}
    assert set(trial.COST_ATTRS) - descriptive <= set(metrics.BY_NAME)

    class Run:
        miou, pixel_acc, mean_acc, iou_per_class = 0.5, 0.9, 0.6, [0.5, None]

    summary = seed_summary([Run(), Run()])
    assert set(summary) - {"miou_seeds"} <= set(metrics.BY_NAME) and summary["miou_std"] == 0.0


# -- checks main holds, kept in the models ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "change,message",
    [
        ({"data": {"size": [0, 64]}}, "data.size: [0, 64]: expected [H, W] > 0"),
        ({"name": "."}, "name: '.': use letters, digits"),
        ({"name": ".."}, "name: '..': use letters, digits"),
        ({"name": "a" * 101}, "name: 101 characters; at most 100"),
        (
            {"num_classes": 5, "data": {"name": "camvid", "root": "/x"}},
            "num_classes: 5 is below the 11 classes of data set 'camvid'",
        ),
        ({"proxy": {"flip": "yes"}}, "proxy.flip: expected true or false, got 'yes'"),
        ({"proxy": {"seeds": 0}}, "proxy.seeds: 0 must be > 0"),
        ({"proxy": {"scale_range": [2.0, 1.0]}}, "proxy.scale_range: [2.0, 1.0]: expected [low, high]"),
        (
            {"proxy": {"prune_schedule": [0.5, 0.75]}},
            "proxy.prune_schedule: [0.5, 0.75]: expected decreasing keep rates",
        ),
        ({"target": {"input": [1, 4, 64, 64]}}, "target.input: [1, 4, 64, 64]: expected [N, 3, H, W]"),
        ({"target": {"threads": 0}}, "target.threads: 0 must be > 0"),
        ({"target": {"rel_ci": 1.5}}, "target.rel_ci: 1.5; allowed: a number in (0, 1)"),
        ({"target": {"runtime": "tvm"}}, "target.runtime: 'tvm' is not allowed; allowed: eager, compile"),
        ({"target": {"fold_bn": "no"}}, "target.fold_bn: expected true or false, got 'no'"),
        ({"data": {"train_images": 0}}, "data.train_images: 0 must be > 0"),
        ({"objectives": [{"name": "miou"}]}, "objectives[0].direction: is required"),
        ({"constraints": {"params": {"max": 1, "avg": 2}}}, "constraints.params.avg: unknown key"),
        (
            {"search": {"sampler": "grid"}, "knobs": {"expansion": {"float": [1, 2]}}},
            "knobs.expansion: the grid sampler needs",
        ),
        ({"search": {"fidelity": {"eta": 1}}}, "search.fidelity.eta: 1 must be ≥ 2"),
        ({"search": {"fidelity": {"rungs": 0}}}, "search.fidelity.rungs: 0 must be > 0"),
    ],
)
def test_more_bad_input_is_one_clear_line(tmp_path, change, message):
    p = write(tmp_path, {**BASE, **change})
    with pytest.raises(SpecError) as info:
        spec.load(p)
    assert str(info.value).startswith(f"{p}: ") and message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_new_keys_have_main_s_defaults_and_fidelity_is_optional(tmp_path):
    s = spec.load(write(tmp_path, BASE))
    t = s.target
    assert (t.threads, t.fold_bn, t.max_seconds, t.rel_ci, t.runtime, t.madds_convention) == (
        1,
        True,
        60.0,
        0.02,
        "eager",
        "conv_linear",
    )
    assert s.proxy.seeds == 1 and s.search.fidelity is None and "fidelity" not in spec.to_dict(s)["search"]
    f = spec.load(write(tmp_path, {**BASE, "search": {"fidelity": {"rungs": 4}}})).search.fidelity
    assert (f.eta, f.rungs) == (3, 4)


def test_code_may_build_sections_the_data_module_checks_itself():
    # data.load names an unknown data set and bad limits itself (tests/test_data.py); the spec checks them in files
    assert spec.DataSpec(name="kitti").name == "kitti" and spec.DataSpec(train_images=0).train_images == 0
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        spec.ProxySpec(iterations=0)
    with pytest.raises(ValidationError):
        spec.TargetSpec(device="tpu")
    with pytest.raises(SpecError, match=r"run.yaml: data.size: \[0, 1\]: expected"):
        spec.parse_data({"size": [0, 1]}, file="run.yaml")
    with pytest.raises(SpecError, match=r"run.yaml: data.name: 'kitti' is not allowed"):
        spec.parse_data({"name": "kitti"}, file="run.yaml")
    assert spec.parse_data(None, file="run.yaml") == spec.DataSpec()


def test_a_spec_is_a_frozen_dataclass_that_copies_with_validation():
    import dataclasses

    from pydantic import ValidationError

    for path in (ROOT / "spaces" / "ndnet.yaml", ROOT / "studies" / "wu2017_table2.yaml"):
        s = spec.load(path)
        copy = dataclasses.replace(s, artifacts="/shared/ckpt")  # as `archsearch run --artifacts` does
        assert copy.artifacts == "/shared/ckpt" and copy.path == s.path and copy.rows == s.rows
        assert spec.to_dict(copy) == {**spec.to_dict(s), "artifacts": "/shared/ckpt"}
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.name = "other"  # type: ignore[misc]
        with pytest.raises(ValidationError):
            dataclasses.replace(s, proxy=dataclasses.replace(s.proxy, batch=0))
