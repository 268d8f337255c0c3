"""The one registry mechanism (archsearch.util.registry) and the five tables built on it; builders discovered
through the ``archsearch.builders`` entry-point group (a plugin module written into tmp_path, no package installed).
"""

from __future__ import annotations

import importlib.metadata
import sys
import typing
from pathlib import Path

import pytest
import torch

from archsearch import builders, cli, cost, data
from archsearch.builders import registry
from archsearch.cost import runtimes
from archsearch.search.sampler import SAMPLERS
from archsearch.spec.sections import SearchSpec
from archsearch.util.errors import ArchsearchError, DataError, KnobError
from archsearch.util.registry import Registry, UnknownName


def test_registry_keeps_order_refuses_duplicates_and_names_the_allowed() -> None:
    reg: Registry[int] = Registry("colour")
    reg.register("red", 1)

    @reg.register("green")
    def _green() -> int:
        return 2

    reg.add("blue", 3)
    assert reg.names() == ("red", "green", "blue")
    assert list(reg) == ["red", "green", "blue"] and len(reg) == 3
    assert reg.get("blue") == 3 and reg["red"] == 1 and reg.get("green") is _green
    assert "red" in reg and "pink" not in reg
    with pytest.raises(ValueError, match="colour 'red' registered twice"):
        reg.register("red", 4)
    assert reg.get("red") == 1
    with pytest.raises(UnknownName) as info:
        reg.get("pink")
    assert str(info.value) == "unknown colour 'pink'; allowed: red, green, blue"
    assert isinstance(info.value, ArchsearchError) and isinstance(info.value, ValueError)


def test_registry_error_hook_and_lazy_loader() -> None:
    calls: list[int] = []

    def loader() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("plugin broken")
        assert reg.names() == ("early",)  # a read inside the loader does not run it again
        reg.add("late", 9)  # a loader may register

    reg: Registry[int] = Registry("thing", error=lambda n, allowed: KeyError(f"{n} not in [{allowed}]"), loader=loader)
    reg.add("early", 1)
    assert calls == []  # registering does not load
    with pytest.raises(RuntimeError, match="plugin broken"):
        reg.names()
    assert reg.names() == ("early", "late") and calls == [1, 1]  # a failed loader runs again at the next read
    assert reg.get("late") == 9 and calls == [1, 1]  # and only until it succeeds
    with pytest.raises(KeyError, match="nope not in \\[early, late\\]"):
        reg.get("nope")


def test_the_five_tables_keep_their_names_and_messages() -> None:
    # builders: sorted names, KnobError as before
    assert builders.names() == sorted(builders.names()) and {"ndnet", "icnet", "fast_scnn"} <= set(builders.names())
    with pytest.raises(KnobError) as unknown:
        builders.get("nope")
    assert (
        str(unknown.value)
        == f"builder 'nope', knob 'builder': unknown builder; registered: {', '.join(builders.names())}"
    )
    # data sets: a tuple of names, DataError as before
    assert data.NAMES == ("cityscapes", "camvid", "synthetic") == data.DATASETS.names()
    with pytest.raises(
        DataError, match=r"^data\.name: unknown data set 'kitti'; expected one of cityscapes, camvid, synthetic$"
    ):
        data.info("kitti")
    # runtimes: name → the packages each needs
    assert tuple(runtimes.RUNTIMES) == ("eager", "compile", "onnxruntime", "openvino", "tensorrt")
    assert runtimes.RUNTIMES.get("openvino") == ("onnx", "onnxscript", "openvino")
    assert runtimes.unavailable("tvm") == (
        "runtime 'tvm' is unknown; allowed: eager, compile, onnxruntime, openvino, tensorrt"
    )
    # counting conventions
    assert cost.resolve_convention("wu2017").excludes == frozenset({"projection_shortcut"})
    with pytest.raises(ValueError, match=r"^unknown madds convention 'fvcore'; allowed: conv_linear, wu2017$"):
        cost.resolve_convention("fvcore")
    # samplers: the spec allows exactly the registered ones and grid (which enumerates and needs no maker)
    allowed = typing.get_args(typing.get_type_hints(SearchSpec)["sampler"])
    assert set(allowed) == {*SAMPLERS.names(), "grid"}
    made = [type(SAMPLERS.get(name)(3)).__name__ for name in SAMPLERS]
    assert made == ["TPESampler", "NSGAIISampler", "RandomSampler"]


PLUGIN = """
import torch.nn as nn
from dataclasses import dataclass
from archsearch.builders import Knobs, Variant, knob, register


@dataclass(frozen=True)
class ToyKnobs(Knobs):
    width: int = knob(8, paper="w", doc="Channels of the one convolution.", low=1, high=64)


@register("{name}", knobs=ToyKnobs, paper="nobody 2025", summary="one 3x3 convolution",
          variants=[Variant("wide", {{"width": 32}}, {{"params": 1}}, source="nowhere")])
def toy(knobs, num_classes):
    return nn.Conv2d(3, num_classes, 3, padding=1, bias=False)
"""


CALLABLE = """
import torch.nn as nn
from dataclasses import dataclass
from archsearch.builders import Knobs, knob, register


@dataclass(frozen=True)
class Toy2Knobs(Knobs):
    width: int = knob(8, paper="w", doc="Channels.", low=1, high=64)


def register_all():
    register("toy2", knobs=Toy2Knobs, paper="nobody 2025", summary="one convolution")(
        lambda knobs, num_classes: nn.Conv2d(3, num_classes, 3, padding=1)
    )
"""


def _plugin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, source: str, value: str) -> None:
    """Write ``module`` into tmp_path (on sys.path), declare it as an ``archsearch.builders`` entry point, and give
    the builder registry a throwaway copy that loads entry points again at its first read."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    ep = importlib.metadata.EntryPoint(name="toy", value=value, group=registry.ENTRY_POINT_GROUP)
    real = importlib.metadata.entry_points

    def entry_points(**params: str) -> typing.Any:
        return importlib.metadata.EntryPoints([ep]) if params.get("group") == registry.ENTRY_POINT_GROUP else real()

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_BUILDERS", registry._BUILDERS.copy())
    monkeypatch.setattr(registry, "_plugins_loaded", set())


def test_an_entry_point_module_adds_a_builder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _plugin(monkeypatch, tmp_path, "archsearch_toy_plugin", PLUGIN.format(name="toy"), "archsearch_toy_plugin")
    assert "toy" in builders.names() and "ndnet" in builders.names()
    model = builders.build("toy", num_classes=5, width=16)
    assert isinstance(model, torch.nn.Conv2d) and model.out_channels == 5
    assert builders.config_of(model).knobs.as_dict() == {"width": 16}
    assert builders.variant("toy.wide").knobs["width"] == 32
    with pytest.raises(KnobError, match="'width': 99 is not allowed; allowed: in \\[1, 64\\]"):
        builders.build("toy", width=99)
    assert cli.main(["builders"]) == 0
    out = capsys.readouterr().out
    assert "toy — one 3x3 convolution [paper: nobody 2025]" in out
    assert "  width: default 8; allowed: in [1, 64]" in out and "    toy.wide — wide" in out
    assert out.index("sparse_two_column — ") < out.index("toy — ")  # sorted among the paper builders


def test_an_entry_point_callable_adds_a_builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _plugin(monkeypatch, tmp_path, "archsearch_toy_callable", CALLABLE, "archsearch_toy_callable:register_all")
    assert "toy2" in builders.names()  # the callable ran at the first read
    assert builders.build("toy2", num_classes=3).out_channels == 3


def test_a_failing_plugin_is_one_line_naming_the_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _plugin(monkeypatch, tmp_path, "archsearch_bad_plugin", "import no_such_module_xyz\n", "archsearch_bad_plugin")
    with pytest.raises(builders.PluginError) as info:
        builders.names()
    expected = (
        "builder plugin toy = 'archsearch_bad_plugin' (entry point group archsearch.builders) failed: "
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    )
    assert str(info.value) == expected
    assert cli.main(["builders"]) == 2  # still failing at the next read: the command says so in one line
    captured = capsys.readouterr()
    assert captured.err == f"archsearch: error: {expected}\n" and captured.out == ""
