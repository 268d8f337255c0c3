"""A search space over several builders (spec ``builders:``) and rows that name their own builder (issue 9, item 6):
qualified parameters, distinct configurations, trials built from their own builder, one front across papers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from archsearch import cli, report, search, spec
from archsearch.search import loop, space
from archsearch.util.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]

CROSS: dict[str, Any] = {
    "name": "cross",
    "builders": {
        "ndnet": {
            "fixed": {"expansion": 2},
            "knobs": {
                "depths": {"choices": [[3, 8, 3], [4, 12, 6]]},
                "widths": {"each": [{"int": [8, 12], "step": 4}, [16], [32]]},
            },
        },
        "fast_scnn": {"knobs": {"pooling": ["none", "stage", "stream"]}},
        "icnet": {"fixed": {"keep_rate": 0.25}},
    },
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_builders_space_qualifies_parameters_and_counts_configurations():
    s = spec.parse(CROSS, file="inline")
    assert s.multi and s.builder is None and list(s.spaces()) == ["ndnet", "fast_scnn", "icnet"]
    dists = space.distributions(s)
    assert list(dists) == [
        "builder",
        "ndnet.depths",
        "ndnet.widths[0]",
        "ndnet.widths[1]",
        "ndnet.widths[2]",
        "fast_scnn.pooling",
    ]
    assert dists["builder"].choices == ("ndnet", "fast_scnn", "icnet")
    configs = space.configurations(s)
    assert space.size(s) == len(configs) == 2 * 2 + 3 + 1
    assert configs[0] == {
        "builder": "ndnet",
        "ndnet.depths": "[3, 8, 3]",
        "ndnet.widths[0]": 8,
        "ndnet.widths[1]": 16,
        "ndnet.widths[2]": 32,
    }
    assert {"builder": "fast_scnn", "fast_scnn.pooling": "stage"} in configs and {"builder": "icnet"} in configs
    # a proposal over the union keeps the chosen builder's parameters only
    assert space.project(s, {"builder": "icnet", "ndnet.depths": "[3, 8, 3]", "fast_scnn.pooling": "none"}) == {
        "builder": "icnet"
    }
    # saved and loaded again, the spec is the same (builder/fixed/knobs left out of a several-builder dump)
    dumped = spec.to_dict(s)
    assert "builder" not in dumped and dumped["builders"]["icnet"] == {"fixed": {"keep_rate": 0.25}, "knobs": {}}
    dumped.pop("rows")  # [] in a search's dump; a spec file gives rows or none
    assert spec.parse(dumped, file="again") == spec.parse(CROSS, file="again")
    # a one-builder spec keeps its plain parameter names and its dump
    one = spec.parse({"name": "t", "builder": "ndnet", "knobs": {"expansion": [2, 4]}}, file="inline")
    assert list(space.distributions(one)) == ["expansion"] and "builders" not in spec.to_dict(one)


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid"])
def test_every_trial_samples_one_builder_and_a_new_configuration(sampler):
    data: dict[str, Any] = {**CROSS, "search": {"sampler": sampler, "seed": 3}}
    if sampler == "grid":  # grid takes choices and int ranges, not each: the same 2 widths as one choice
        ndnet = {
            "fixed": {"expansion": 2},
            "knobs": {"depths": CROSS["builders"]["ndnet"]["knobs"]["depths"], "widths": [[8, 16, 32], [12, 16, 32]]},
        }
        data["builders"] = {**CROSS["builders"], "ndnet": ndnet}
    s = spec.parse(data, file="inline")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(sampler=search.sampler(s), directions=["maximize", "minimize"])
    dists, seen, builders = space.distributions(s), set(), set()
    for i in range(space.size(s)):  # the whole space, each configuration once
        t = loop._ask(st, s, dists)  # the run loop's ask
        builder, knobs, row = space.sample_config(t, s)
        assert row is None and t.params["builder"] == builder
        assert all(k == "builder" or k.startswith(f"{builder}.") for k in t.params), t.params
        assert set(knobs) == set(s.fixed_of(builder)) | set(s.spaces()[builder].knobs)
        assert all(knobs[k] == v for k, v in s.fixed_of(builder).items())
        seen.add(space.config_key(t.params))
        builders.add(builder)
        st.tell(t, [float(i), float(i)])
    assert len(seen) == space.size(s) == 8 and builders == {"ndnet", "fast_scnn", "icnet"}


def test_rows_may_name_their_own_builder(tmp_path):
    s = spec.load(
        write(
            tmp_path,
            {
                "name": "t",
                "builders": {"ndnet": {"fixed": {"expansion": 2}}, "fast_scnn": {}},
                "rows": [
                    {"variant": "fast_scnn.spssn"},
                    {"variant": "ndnet.ndnet45"},
                    {"label": "icnet-half", "builder": "icnet", "knobs": {"keep_rate": 0.5}},
                ],
            },
        )
    )
    assert [s.row_builder(r) for r in s.rows] == ["fast_scnn", "ndnet", "icnet"]
    assert s.rows[0]["label"] == "Stage-pooling (SPSSN)" and s.rows[0]["knobs"] == {"pooling": "stage"}
    st = optuna.create_study(sampler=search.sampler(s))
    got = []
    for _ in s.rows:
        t = st.ask(space.distributions(s))
        got.append(space.sample_config(t, s))
        st.tell(t, 0.0)
    # in order; a row's knobs over its builder's fixed ones (the variant's expansion wins over fixed)
    assert [(b, r) for b, _, r in got] == [("fast_scnn", 0), ("ndnet", 1), ("icnet", 2)]
    assert got[1][1]["expansion"] == 4 and got[2][1] == {"keep_rate": 0.5}
    # a one-builder table may hold a row of another builder too
    one = spec.load(
        write(
            tmp_path,
            {
                "name": "t",
                "builder": "ndnet",
                "rows": [
                    {"variant": "ndnet.ndnet29"},
                    {"label": "fast", "builder": "fast_scnn", "knobs": {"pooling": "none"}},
                ],
            },
        )
    )
    assert [one.row_builder(r) for r in one.rows] == ["ndnet", "fast_scnn"] and "builder" not in one.rows[0]


@pytest.mark.parametrize(
    "data,message",
    [
        (
            {**CROSS, "builder": "ndnet"},
            "builders: a spec names one builder (builder: with fixed: and knobs:) or several",
        ),
        ({**CROSS, "fixed": {"expansion": 2}}, "fixed: with builders:, each builder has its own fixed"),
        ({"name": "t"}, "builder: is required (a string; or builders: for a space over several)"),
        ({"name": "t", "builders": {"nobody": {}}}, "builders.nobody: 'nobody' is not a builder; allowed: "),
        (
            {"name": "t", "builders": {"ndnet": {"knobs": {"depth": [29]}}}},
            "builders.ndnet.knobs.depth: unknown knob for builder 'ndnet'; allowed: widths",
        ),
        (
            {"name": "t", "builders": {"fast_scnn": {"fixed": {"pooling": "ppm"}}}},
            "builders.fast_scnn.fixed.pooling: 'ppm' is not allowed",
        ),
        (
            {"name": "t", "builders": {"ndnet": {"knobs": {"expansion": {"int": [1, 6], "step": 0}}}}},
            "builders.ndnet.knobs.expansion.step: 0 must be > 0",
        ),
        ({"name": "t", "builders": {"ndnet": {"kobs": {}}}}, "builders.ndnet.kobs: unknown key; allowed: fixed, knobs"),
        (
            {
                "name": "t",
                "builders": {"ndnet": {"knobs": {"expansion": [2, 4]}}},
                "rows": [{"variant": "ndnet.ndnet45"}],
            },
            "rows: a spec has either knobs",
        ),
        (
            {"name": "t", "builders": {"ndnet": {}}, "rows": [{"label": "x", "builder": "nobody"}]},
            "rows[0].builder: 'nobody' is not a builder",
        ),
        (
            {"name": "t", "builders": {"ndnet": {}}, "rows": [{"variant": "fast_scnn.spssn", "builder": "ndnet"}]},
            "rows[0].builder: differs from variant 'fast_scnn.spssn'",
        ),
        (
            {
                "name": "t",
                "builders": {"ndnet": {}},
                "rows": [{"label": "x", "builder": "icnet", "knobs": {"keep_rate": 2}}],
            },
            "rows[0].knobs.keep_rate: 2 is not allowed",
        ),
    ],
)
def test_bad_builders_specs_exit_2_with_one_line(tmp_path, capsys, data, message):
    p = write(tmp_path, data)
    with pytest.raises(SpecError) as info:
        spec.load(p)
    assert str(info.value).startswith(f"{p}: ") and message in str(info.value), str(info.value)
    assert cli.main(["run", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_the_shipped_cross_paper_space_loads():
    s = spec.load(ROOT / "spaces" / "cross_paper.yaml")
    assert set(s.spaces()) == {"ndnet", "fast_scnn", "icnet"} and space.size(s) == 2 * 3 + 2 * 2 + 2
    assert s.search.trials <= space.size(s)


# -- one study, one front across papers ---------------------------------------------------------------------

TINY = [
    "data.train_images=2",
    "data.val_images=1",
    "proxy.iterations=1",
    "proxy.batch=2",
    "proxy.eval_batch=1",
    "data.size=[64,128]",
    "proxy.scale=1.0",
    "target.input=[1,3,64,128]",
    "target.repeats=1",
    "target.warmup=0",
    "target.max_seconds=0.5",
    "target.rel_ci=0.5",
    "target.fold_bn=false",
    "target.device=cpu",
    "proxy.amp=false",
]


@pytest.mark.slow
def test_one_study_front_holds_ndnet_and_fast_scnn(tmp_path, monkeypatch):
    """Objectives params ↓ and multiply-adds ↓ (exact counts: the front is known before the run). An NDNet with a wide
    first stage (widths [64, 16, 16], e = 2: 76k parameters, 14.4M multiply-adds at 64×128) has fewer parameters,
    a slim Fast-SCNN (t = 1, shallow width 16: 233k, 6.8M) fewer multiply-adds, so both are on the front; the
    NDNet with e = 4 (157k, 28.9M) is dominated by e = 2 and is not. Every trial is trained and scored as usual."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    data = {
        "name": "cross",
        "builders": {
            "ndnet": {"fixed": {"widths": [64, 16, 16], "depths": [3, 3, 3]}, "knobs": {"expansion": [2, 4]}},
            "fast_scnn": {"fixed": {"pooling": "none", "expansion": 1, "shallow_width": 16}},
        },
        "objectives": [{"name": "params", "direction": "minimize"}, {"name": "madds", "direction": "minimize"}],
        "data": {"cache_dir": str(tmp_path / "cache")},
        "search": {"sampler": "grid", "trials": 3},
    }
    s = spec.load(write(tmp_path, data), TINY)
    url = f"sqlite:///{tmp_path / 'cross.db'}"
    lines: list[str] = []
    st = search.optimize(s, url, progress=False, echo=lines.append)
    frame = report.trials_frame(st)
    assert list(frame["state"]) == ["COMPLETE"] * 3 and frame["miou"].notna().all()
    by = {(t.user_attrs["builder"], t.user_attrs["knobs"]["expansion"]): t.user_attrs for t in st.get_trials()}
    nd2, nd4, fast = by[("ndnet", 2)], by[("ndnet", 4)], by[("fast_scnn", 1)]
    # the counts cross (else the front would hold one builder only) and e = 4 is dominated by e = 2
    assert nd2["params"] < fast["params"] and fast["madds"] < nd2["madds"]
    assert nd2["params"] < nd4["params"] and nd2["madds"] < nd4["madds"]
    front = report.pareto_front(st, frame)
    assert sorted(front["builder"]) == ["fast_scnn", "ndnet"] and list(front["knob.expansion"]).count(4) == 0
    assert {t.number for t in st.best_trials} == set(front["number"])
    # each trial was built from its own builder, and says so in its line and its record
    assert all(t.user_attrs["arch_key"] for t in st.get_trials())
    assert (
        sum("| fast_scnn" in line for line in lines) == 1 and sum("| ndnet: expansion=" in line for line in lines) == 2
    )
    assert st.metric_names == ["params", "madds"] and "objectives" not in st.user_attrs
