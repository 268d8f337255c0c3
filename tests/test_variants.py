"""Named paper variants in the registry, the model's one config, and study rows that reference variants."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch.nn as nn
import yaml

import archsearch
from archsearch import builders, checkpoint, spec
from archsearch.builders import ModelConfig, Variant, config_of
from archsearch.builders.wu2017.sparsity import regions_to_keep
from archsearch.cli import main
from archsearch.errors import KnobError, SpecError

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
        "fast_scnn.base", "fast_scnn.stream", "fast_scnn.spssn"
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
    assert config == ModelConfig("ndnet", builders.get("ndnet").resolve(
        {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4}), 7, "ndnet.ndnet29")
    assert config.as_dict() == {"builder": "ndnet", "num_classes": 7, "variant": "ndnet.ndnet29",
                                "knobs": {"widths": [24, 48, 96], "depths": [3, 8, 3], "expansion": 4}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.variant = "x"  # type: ignore[misc]


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
    with pytest.raises(KnobError, match="expected <builder>.<variant>"):
        builders.variant("ndnet")
    with pytest.raises(KnobError, match="unknown builder"):
        builders.variant("nonet.ndnet45")
    with pytest.raises(KnobError, match="unknown knob"):
        archsearch.build("ndnet.ndnet45", width=3)


def test_variant_is_immutable_and_checked() -> None:
    v = builders.variant("ndnet.ndnet45")
    with pytest.raises(TypeError):
        v.paper["params"] = 1  # type: ignore[index]
    assert isinstance(v.knobs["widths"], tuple) and v.knob_values()["widths"] == [16, 32, 64]
    with pytest.raises(ValueError, match="not a finite number"):
        Variant("x", {}, {"fps": "fast"}, "somewhere")  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="source"):
        Variant("x", {}, {"fps": 1.0}, "")
    with pytest.raises(ValueError, match="lower-case"):
        Variant("X-1", {}, {"fps": 1.0}, "somewhere")


def test_config_of_a_foreign_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="not built by archsearch.build"):
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
    rows = [{"variant": "ndnet.ndnet45"}, {"variant": "ndnet.ndnet29_e2", "label": "narrow"},
            {"label": "mine", "knobs": {"expansion": 3}, "paper": {"fps": 1.5}}]
    s = spec.load(_write(tmp_path, {"name": "t", "builder": "ndnet", "fixed": {"expansion": 4}, "rows": rows}))
    v45, v29 = builders.variant("ndnet.ndnet45"), builders.variant("ndnet.ndnet29_e2")
    assert s.rows[0] == {"label": "NDNet45", "knobs": {"widths": [16, 32, 64], "depths": [4, 12, 6], "expansion": 4},
                         "paper": dict(v45.paper), "variant": "ndnet.ndnet45"}
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
    block = out[out.index("ndnet — "):]
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


def test_cli_profile_takes_a_variant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "ndnet.ndnet45", "--input", "1,3,64,128", "--repeats", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "variant ndnet.ndnet45" in out and "'widths': [16, 32, 64]" in out
    assert main(["profile", "ndnet.nope", "--input", "1,3,64,128"]) == 2
    assert "unknown variant 'nope'" in capsys.readouterr().err
