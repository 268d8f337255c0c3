"""Named paper variants in the registry, the model's one config, and study rows that reference variants."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch.nn as nn
import yaml

import archsearch
from archsearch import builders, spec
from archsearch.builders import ModelConfig, Variant, config_of
from archsearch.builders.wu2017.sparsity import regions_to_keep
from archsearch.cli import main
from archsearch.training import checkpoint
from archsearch.util.errors import KnobError, SpecError

ROOT = Path(__file__).resolve().parents[1]


def test_every_builder_declares_valid_variants_with_sources() -> None:
    for name in builders.names():
        entry = builders.get(name)
        assert entry.variants, f"{name} declares no paper variant"
        for v in entry.variants:
            assert v.builder == name and v.qualname == f"{name}.{v.name}"
            assert v.paper and v.source and v.label
            entry.resolve(v.knob_values())  # the variant's knobs are valid for its builder
    assert [v.qualname for v in builders.variants("fast_scnn")] == [
        "fast_scnn.base",
        "fast_scnn.stream",
        "fast_scnn.spssn",
    ]


def test_recorded_numbers_agree_with_the_variants_own_knobs() -> None:
    """Cross-checks of the transcription: a number the paper derives from the configuration matches its knobs."""
    for v in builders.variants("ndnet"):  # Table II "max width" = e · n_md3
        assert v.paper["max_width"] == v.knobs["expansion"] * v.knobs["widths"][-1], v.qualname
    sparse = [v for v in builders.variants("sparse_two_column") if "regions_computed" in v.paper]
    assert len(sparse) == 12  # Table 3: k = ⌊p·regions⌋ (Sec. 4.4), regions = (1024/size)·(2048/size)
    for v in sparse:
        total = (1024 // v.knobs["region_size"]) * (2048 // v.knobs["region_size"])
        assert v.paper["regions_total"] == total, v.qualname
        assert v.paper["regions_computed"] == regions_to_keep(v.knobs["p"], total), v.qualname
        assert f"({int(v.paper['regions_computed'])}/{total}" in v.label


def test_build_a_variant_sets_its_knobs_and_identity() -> None:
    model = archsearch.build("ndnet.ndnet29", num_classes=7)
    config = config_of(model)
    assert config == ModelConfig(
        "ndnet",
        builders.get("ndnet").resolve({"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4}),
        7,
        "ndnet.ndnet29",
    )
    assert config.as_dict() == {
        "builder": "ndnet",
        "num_classes": 7,
        "variant": "ndnet.ndnet29",
        "knobs": {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4},
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.variant = "x"  # type: ignore[misc]


_LIGHT = ("ndnet", "fast_scnn")  # small networks: every variant; the ResNet-50 builders (a second or more per
# build): the first variant each, the others' knobs are resolved in test_every_builder_declares_valid_variants


@pytest.mark.parametrize(
    "qualname",
    [v.qualname for name in builders.names() for v in builders.variants(name)[: None if name in _LIGHT else 1]],
)
def test_every_variant_builds_by_its_name(qualname: str) -> None:
    """``archsearch.build("<builder>.<variant>")``: the variant's knobs, and its name in the model's config."""
    v = builders.variant(qualname)
    model = archsearch.build(qualname, num_classes=3)
    config = config_of(model)
    assert (config.builder, config.num_classes, config.variant) == (v.builder, 3, qualname)
    assert config.knobs == builders.get(v.builder).resolve(v.knob_values())


def test_overrides_win_and_a_changed_variant_is_no_longer_named() -> None:
    same = config_of(archsearch.build("ndnet.ndnet29", expansion=4))
    assert same.variant == "ndnet.ndnet29"  # an override equal to the variant's value keeps its identity
    changed = config_of(archsearch.build("ndnet.ndnet29", expansion=2))
    assert changed.knobs.as_dict()["expansion"] == 2 and changed.knobs.as_dict()["widths"] == [24, 48, 96]
    assert changed.variant is None
    plain = config_of(archsearch.build("ndnet", widths=[24, 48, 96], depths=[3, 8, 3]))
    assert plain.knobs == same.knobs and plain.variant is None  # only build("<builder>.<variant>") names one


def test_unknown_variant_is_one_line_listing_the_allowed() -> None:
    with pytest.raises(KnobError) as err:
        archsearch.build("ndnet.ndnet46")
    message = str(err.value)
    assert "\n" not in message and "unknown variant 'ndnet46'" in message
    assert "ndnet.ndnet45" in message and "ndnet.wider_ndnet29" in message
    with pytest.raises(KnobError, match=r"expected <builder>.<variant>"):
        builders.variant("ndnet")
    with pytest.raises(KnobError, match=r"unknown builder"):
        builders.variant("nonet.ndnet45")
    with pytest.raises(KnobError, match=r"unknown knob"):
        archsearch.build("ndnet.ndnet45", width=3)


def test_variant_is_immutable_and_checked() -> None:
    v = builders.variant("ndnet.ndnet45")
    with pytest.raises(TypeError):
        v.paper["params"] = 1  # type: ignore[index]
    assert isinstance(v.knobs["widths"], tuple) and v.knob_values()["widths"] == [16, 32, 64]
    with pytest.raises(ValueError, match=r"not a finite number"):
        Variant("x", {}, {"fps": "fast"}, "somewhere")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"source"):
        Variant("x", {}, {"fps": 1.0}, "")
    with pytest.raises(ValueError, match=r"lower-case"):
        Variant("X-1", {}, {"fps": 1.0}, "somewhere")


def test_config_of_a_foreign_model_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"not built by archsearch.build"):
        config_of(nn.Conv2d(3, 3, 1))


def test_checkpoint_records_the_config(tmp_path: Path) -> None:
    model = archsearch.build("ndnet.ndnet61_e2", num_classes=5)
    data = checkpoint.payload(model, data="synthetic", root=None, scale=0.25)
    assert (data["builder"], data["num_classes"], data["variant"]) == ("ndnet", 5, "ndnet.ndnet61_e2")
    assert data["knobs"] == {"widths": [12, 24, 48], "depths": [6, 16, 8], "expansion": 2}


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_rows_by_variant_load_with_the_registry_knobs_and_numbers(tmp_path: Path) -> None:
    rows = [
        {"variant": "ndnet.ndnet45"},
        {"variant": "ndnet.ndnet29_e2", "label": "narrow"},
        {"label": "mine", "knobs": {"expansion": 3}, "paper": {"fps": 1.5}},
    ]
    s = spec.load(_write(tmp_path, {"name": "t", "builder": "ndnet", "fixed": {"expansion": 4}, "rows": rows}))
    v45, v29 = builders.variant("ndnet.ndnet45"), builders.variant("ndnet.ndnet29_e2")
    assert s.rows[0] == {
        "label": "NDNet45",
        "knobs": {"widths": [16, 32, 64], "depths": [4, 12, 6], "expansion": 4},
        "paper": dict(v45.paper),
        "variant": "ndnet.ndnet45",
    }
    assert s.rows[1]["label"] == "narrow" and s.rows[1]["knobs"]["expansion"] == 2  # the variant's knobs win
    assert s.rows[1]["paper"] == dict(v29.paper)
    assert s.rows[2] == {"label": "mine", "knobs": {"expansion": 3}, "paper": {"fps": 1.5}}


def test_a_saved_resolved_spec_with_variant_rows_loads_again(tmp_path: Path) -> None:
    s = spec.load(ROOT / "studies" / "icnet_table2.yaml")
    again = spec.load(_write(tmp_path, spec.to_dict(s)))  # rows repeat the variant's knobs and paper
    assert again.rows == s.rows and [r["label"] for r in again.rows] == ["keep 1", "keep 0.5", "keep 0.25"]


@pytest.mark.parametrize(
    "row,match",
    [
        ({"variant": "ndnet.ndnet46"}, r"rows\[0\].variant: unknown variant 'ndnet.ndnet46'; allowed: .*ndnet.ndnet45"),
        ({"variant": "fast_scnn.spssn"}, r"rows\[0\].variant: 'fast_scnn.spssn' is not a variant of builder 'ndnet'"),
        ({"variant": "ndnet.ndnet45", "paper": {"fps": 1}}, r"rows\[0\].paper: differs from variant 'ndnet.ndnet45'"),
        ({"variant": "ndnet.ndnet45", "knobs": {"expansion": 2}}, r"rows\[0\].knobs: differs from variant"),
        ({"variant": "ndnet.ndnet45", "note": 1}, r"rows\[0\]: unknown key 'note'; allowed beside variant: label"),
        ({"variant": 45}, r"rows\[0\].variant: 45 is not a variant"),
    ],
)
def test_bad_variant_rows_are_one_line_spec_errors(tmp_path: Path, row: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match) as err:
        spec.load(_write(tmp_path, {"name": "t", "builder": "ndnet", "rows": [row]}))
    assert "\n" not in str(err.value) and str(tmp_path / "s.yaml") in str(err.value)


@pytest.mark.parametrize(
    "study",
    ["ndnet_table2", "spssnet_table6", "icnet_table1", "icnet_table2", "icnet_table4"]
    + [f"wu2017_table{i}" for i in range(1, 5)],
)
def test_paper_studies_take_every_row_from_a_variant(study: str) -> None:
    s = spec.load(ROOT / "studies" / f"{study}.yaml")
    assert s.rows and all(r["variant"].startswith(f"{s.builder}.") for r in s.rows)
    for r in s.rows:
        v = builders.variant(r["variant"])
        assert r["knobs"] == v.knob_values() and r["paper"] == dict(v.paper)
    raw = yaml.safe_load((ROOT / "studies" / f"{study}.yaml").read_text())
    assert all("paper" not in r and "knobs" not in r for r in raw["rows"])  # no number retyped in the study


def test_cli_builders_lists_variants_with_numbers_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["builders"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("ndnet — ") :]
    block = block[: block.index("\n\n")]
    v = builders.variant("ndnet.ndnet45")
    assert f"{v.qualname} — {v.label}" in block
    assert "paper  " + ", ".join(f"{k} {x:g}" for k, x in v.paper.items()) in block  # each number, unscaled
    assert "knobs  widths=[16, 32, 64], depths=[4, 12, 6], expansion=4" in block
    assert "source Yang et al., Table II, row 'NDNet45'" in block
    assert "icnet.sub124_keep050 — sub124" in out and "fast_scnn.spssn — Stage-pooling (SPSSN)" in out
    lines = [line for name in builders.names() for line in builders.format_variants(name)]
    assert len(lines) > 100 and all(len(line) <= 100 for line in lines)
    assert all(line in out for line in lines)  # every variant block is printed


@pytest.mark.slow
def test_cli_profile_takes_a_variant(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["profile", "ndnet.ndnet45", "--input", "1,3,64,128", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "variant ndnet.ndnet45" in out and "'widths': [16, 32, 64]" in out
    assert main(["profile", "ndnet.nope", "--input", "1,3,64,128"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err


# -- each paper number is written once ----------------------------------------------------------------------------
# A paper number is a value of a registered variant's ``paper``. Writing it means a numeric literal token (not part
# of a longer number, name or version: ``1123``, ``x123``, ``2.123.1`` do not write 123) that spells it — the
# examples are made-up numbers, e.g. a count of 123·10⁹ multiply-adds:
# - its value with an exponent or a unit letter: ``123e9``, ``123.0e9``, ``123g``, ``12.5G``, ``1.23M``, ``516k``;
# - its plain value when that is 1000 or more (``516_000``, ``516000``, ``12500000000``) or has a decimal point and
#   three significant digits or more (``71.20``, ``71.2``, ``12.5``);
# - for a count (``params``, ``madds``), its value in G, M or k with a decimal point and three significant digits
#   or more: ``123.0`` and ``12.5`` (g), ``1.23`` (M), ``0.516`` (M).
# Not counted, since such spellings are too common to tell a paper number from any other: plain integers below
# 1000 (``447``, ``256``) and, without an exponent or a unit, values of fewer than three significant digits
# (``9.3``, ``60.0``). Keys derived from the variant's own knobs (Table II ``max_width`` = e·n_md3, Table 3's
# region counts) are checked against the knobs above and skipped here. Source files: the tracked .py, .yaml, .md,
# .toml, .txt and .cfg files; the generated benchmark reports (benchmarks/results/, benchmarks/RESULTS.md), which
# print the registry's numbers beside measured ones, are outputs and skipped.
_NUMBER = re.compile(r"(?<![\w.])(\d[\d_]*(?:\.\d+)?)(?:([eE][+-]?\d+)|\s?([gGMk])(?![A-Za-z]))?(?!\w|\.\d)")
_UNIT = {"g": 1e9, "G": 1e9, "M": 1e6, "k": 1e3}
_COUNTS = ("params", "madds")
_DERIVED = ("max_width", "regions_computed", "regions_total")
_SOURCES = (".py", ".yaml", ".yml", ".md", ".toml", ".txt", ".cfg")
_GENERATED = ("benchmarks/results/", "benchmarks/RESULTS.md")


def _significant(x: float) -> int:
    digits = f"{x:.6g}".split("e")[0].replace(".", "").replace("-", "")
    return len(digits.strip("0"))


def _key(x: float) -> str:
    return f"{x:.9g}"


def _paper_numbers() -> dict[str, tuple[float, set[str], set[str]]]:
    """``{value key: (value, keys, variants)}`` of every registered paper number but the derived ones."""
    out: dict[str, tuple[float, set[str], set[str]]] = {}
    for name in builders.names():
        for v in builders.variants(name):
            for key, value in v.paper.items():
                if key not in _DERIVED:
                    entry = out.setdefault(_key(float(value)), (float(value), set(), set()))
                    entry[1].add(key)
                    entry[2].add(v.qualname)
    return out


def _written(text: str, numbers: dict[str, tuple[float, set[str], set[str]]]) -> set[str]:
    """The keys of ``numbers`` that ``text`` writes (as the comment above defines it)."""
    found = set()
    for m in _NUMBER.finditer(text):
        mantissa, exponent, unit = m.groups()
        x = float(mantissa.replace("_", ""))
        point = "." in mantissa
        if exponent or unit:
            value = x * (10.0 ** int(exponent[1:]) if exponent else _UNIT[unit])
            if _key(value) in numbers:
                found.add(_key(value))
            continue
        if _key(x) in numbers and (x >= 1000 or (point and _significant(x) >= 3)):
            found.add(_key(x))
        if point and _significant(x) >= 3:
            for scale in (1e9, 1e6, 1e3):
                k = _key(x * scale)
                if k in numbers and numbers[k][1] & set(_COUNTS):
                    found.add(k)
    return found


def test_the_paper_number_spellings_that_count() -> None:
    # made-up numbers (a paper's would be a second copy of it here)
    numbers = {
        _key(v): (v, {key}, {"x"})
        for v, key in (
            (123e9, "madds"),
            (12.5e9, "madds"),
            (516_000, "params"),
            (71.20, "miou_pct"),
            (447, "latency_ms"),
            (9.3, "fps"),
        )
    }
    for text, expected in [
        ("123e9 123.0e9 123_000_000_000 123g", {_key(123e9)}),
        ("(8, 123.0) 12.5 12.5G", {_key(123e9), _key(12.5e9)}),
        ("516_000 0.516 516k", {_key(516_000)}),
        ("71.20 71.2 447e0 9.3e0", {_key(71.20), _key(447), _key(9.3)}),
        ("1123e9 x123e9 123 2.12.5 12.55 171.20 1.71.2 447 9.3 v71.2 516_0000", set()),
    ]:
        assert _written(text, numbers) == expected, text


def test_each_paper_number_is_written_in_one_source_file() -> None:
    """Issue 9: the numbers a paper reports are written once, in the builder module that registers its variants;
    tests, studies, benchmarks and docs read them from the registry (``builders.variant(...).paper``)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to search")
    paths = [p for p in listed.splitlines() if p.endswith(_SOURCES) and not p.startswith(_GENERATED)]
    numbers = _paper_numbers()
    assert len(numbers) > 150  # every table: NDNet II, SPSSNet 3/6, Wu 1–5, ICNet 1/2/4
    files: dict[str, set[str]] = {k: set() for k in numbers}
    for p in paths:
        path = ROOT / p
        if path.is_file():
            for k in _written(path.read_text(encoding="utf-8", errors="replace"), numbers):
                files[k].add(p)
    repeated = {
        f"{numbers[k][0]:g} ({', '.join(sorted(numbers[k][2]))})": sorted(f) for k, f in files.items() if len(f) > 1
    }
    assert not repeated, f"paper numbers written in more than one file: {repeated}"
    # the one file is the builder module that registers the number (found there when its spelling counts)
    assert all(p.startswith("archsearch/builders/") for f in files.values() for p in f if len(f) == 1)
    for qualname, key, where in [
        ("sparse_two_column.model_a", "madds", "wu2017/variants.py"),  # Table 4
        ("ndnet.ndnet29", "params", "ndnet.py"),  # Table II
        ("fast_scnn.spssn", "params", "spssnet.py"),
    ]:  # Table 6
        assert files[_key(builders.variant(qualname).paper[key])] == {f"archsearch/builders/{where}"}, qualname
