"""The README's Python API through the top-level names alone (``archsearch.build``, ``archsearch.count_params``, …):
what they return, checked against the registry's paper numbers and the modules that define them."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import archsearch
from archsearch import builders, cost

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = (
    "build",
    "builder_names",
    "config_of",
    "count_flops",
    "count_madds",
    "count_params",
    "latency",
    "load_spec",
    "variant",
    "variants",
)


def test_the_top_level_names_are_the_library_functions() -> None:
    assert set(PUBLIC) | {"__version__"} == set(archsearch.__all__)
    assert archsearch.build is builders.build and archsearch.builder_names is builders.names
    assert archsearch.count_madds is cost.count_madds and archsearch.latency is cost.latency
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert archsearch.__version__ == version


def test_build_by_knobs_and_by_variant_give_the_paper_network() -> None:
    model = archsearch.build("ndnet", num_classes=19, widths=[24, 48, 96], depths=[3, 8, 3], expansion=4)
    named = archsearch.build("ndnet.ndnet29")
    config, named_config = archsearch.config_of(model), archsearch.config_of(named)
    assert (config.builder, config.num_classes, config.variant) == ("ndnet", 19, None)
    assert named_config.variant == "ndnet.ndnet29" and named_config.knobs == config.knobs
    assert archsearch.count_params(model) == archsearch.count_params(named) == 505_387  # the README's number
    assert "ndnet" in archsearch.builder_names() and archsearch.builder_names() == sorted(archsearch.builder_names())


def test_parameter_count_of_ndnet45_against_the_paper() -> None:
    paper = archsearch.variant("ndnet.ndnet45").paper["params"]  # Table II, written once in the builder
    ours = archsearch.count_params(archsearch.build("ndnet.ndnet45"))
    assert abs(ours / paper - 1) < 0.01
    table = [v.qualname for v in archsearch.variants("ndnet")]
    assert table[:2] == ["ndnet.wider_ndnet29", "ndnet.ndnet29"] and "ndnet.ndnet45" in table and len(table) == 7


@pytest.mark.slow
def test_counts_and_latency_through_the_top_level() -> None:
    model = archsearch.build("ndnet.ndnet45")
    size = (1, 3, 32, 64)
    madds = archsearch.count_madds(model, input_size=size)
    # an FCN's multiply-adds scale with the pixel count: four times the pixels, four times the count
    assert archsearch.count_madds(model, (1, 3, 64, 128)) == 4 * madds
    assert madds < archsearch.count_flops(model, size)  # fvcore's total adds batch norm and up-sampling
    assert archsearch.count_madds(model, size, convention="wu2017") == madds  # no projection shortcuts in NDNet
    timed = archsearch.latency(model, size, "cpu", warmup=1, repeats=2, threads=1)
    assert timed.median_ms > 0 and timed.p90_ms >= timed.median_ms and timed.repeats >= 2
    assert timed.device == cost.device_name(torch.device("cpu"), 1)


def test_load_spec_reads_overrides() -> None:
    spec = archsearch.load_spec(ROOT / "spaces" / "ndnet.yaml", ["proxy.iterations=7"])
    assert (spec.name, spec.builder, spec.proxy.iterations) == ("ndnet", "ndnet", 7)


@pytest.mark.slow
def test_import_archsearch_leaves_out_the_optional_heavy_libraries() -> None:
    heavy = ("matplotlib", "onnx", "onnxruntime", "openvino", "tensorrt", "optuna_dashboard")
    code = f"import sys, archsearch; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
