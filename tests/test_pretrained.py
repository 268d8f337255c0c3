"""The ResNet-50 stem (torchvision's 7×7 or PSPNet's deep 3×3 stem) and pre-trained starts from local
torchvision-layout files (issue 10, item 5). The weight files are written by the tests: our own ResNet-50 has
torchvision's key layout, so its state dict with random values stands in for an ImageNet file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from archsearch import build
from archsearch.builders.resnet import STEM_READERS, ResNet50, load_pretrained
from archsearch.cli import main
from archsearch.cost import count_madds
from archsearch.training.channel_pruning import progressive
from archsearch.util.errors import KnobError
from submodules import submodule

STEM_LAYERS_DEEP = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


SMALL = 0.25  # width of the ResNet-50s the loader tests use directly (small files)


class _Payload:
    """Not a tensor: a file holding it needs code to unpickle."""


def _write(path: Path, stem: str, seed: int = 1, edit=None, width: float = 1.0) -> dict[str, torch.Tensor]:
    """A random ResNet-50 state dict with ``stem`` in torchvision's layout, with the ImageNet ``fc``."""
    g = torch.Generator().manual_seed(seed)
    layout = ResNet50(stem=stem, width=width).state_dict()
    state = {k: torch.rand(v.shape, generator=g) if v.is_floating_point() else v for k, v in layout.items()}
    state["fc.weight"] = torch.rand(1000, round(2048 * width), generator=g)
    state["fc.bias"] = torch.rand(1000, generator=g)
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("weights") / "resnet50_torchvision.pth"
    return path, _write(path, "resnet")


def _layer(key: str) -> str:
    return key.rsplit(".", 1)[0]


# --- the stem ---------------------------------------------------------------------------------------------------


def test_deep_stem_is_pspnets_three_3x3_convolutions() -> None:
    """PSPNet's deep base: 3×3 convs of 64, 64, 128 filters, the first of stride 2; stage 2 then reads 128
    channels. The 7×7 stem: one 7×7 stride-2 conv of 64, stage 2 reads 64."""
    deep = ResNet50(stem="deep")
    convs = [deep.conv1, deep.conv2, deep.conv3]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 128)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert submodule(deep, "layer1.0.conv1", nn.Conv2d).in_channels == 128
    assert submodule(deep, "layer1.0.downsample.0", nn.Conv2d).in_channels == 128
    resnet = ResNet50(stem="resnet")
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2) and resnet.conv1.out_channels == 64
    assert not hasattr(resnet, "conv2") and submodule(resnet, "layer1.0.conv1", nn.Conv2d).in_channels == 64
    x = torch.randn(1, 3, 64, 96)
    for model in (deep, resnet):  # both at 1/4 after the max pooling
        assert model.eval().forward_stem(x).shape[-2:] == (16, 24)
    # a stem other than the two is refused at the knob boundary (issue 9: values are validated there only)
    with pytest.raises(KnobError, match="'stem': 'wide' is not allowed; allowed: one of 'resnet', 'deep'"):
        build("pspnet50", 19, stem="wide")


@pytest.mark.slow
def test_stem_knob_defaults_and_choices() -> None:
    """deep for pspnet50 and icnet (the papers), resnet for the Wu builders (He et al.'s ResNet-50)."""
    assert submodule(build("icnet", keep_rate=0.25), "backbone", ResNet50).stem == "deep"
    assert submodule(build("pspnet50", keep_rate=0.25, output_stride=32), "backbone", ResNet50).stem == "deep"
    assert submodule(build("sharpmask_fcn"), "column.backbone", ResNet50).stem == "resnet"
    columns = build("sparse_two_column").get_submodule("columns").children()
    assert {submodule(c, "backbone", ResNet50).stem for c in columns} == {"resnet"}
    assert submodule(build("sharpmask_fcn", stem="deep"), "column.backbone.conv3", nn.Conv2d).out_channels == 128
    with pytest.raises(KnobError, match="stem"):
        build("icnet", stem="7x7")


def test_icnet_branch_two_has_the_papers_17_convolutions() -> None:
    """Sec. 4.2: "There are 17 convolutional layers in branch two" — with the deep stem: 3 stem convolutions,
    stage 2 (9 and a projection) and the first unit of stage 3 (3 and a projection). The 7×7 stem gives 15."""
    x = torch.randn(1, 3, 128, 256)
    for stem, expected in (("deep", 17), ("resnet", 15)):
        model = build("icnet", keep_rate=0.25, stem=stem).eval()
        calls: list[str] = []
        hooks = [
            m.register_forward_hook(lambda mod, inp, out, n=n, c=calls: c.append(n) if inp[0].shape[-2] > 4 else None)
            for n, m in model.get_submodule("backbone").named_modules()
            if isinstance(m, nn.Conv2d)
        ]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        # backbone convolutions on maps above 1/32 of the input: the 1/2 input's branch (the top branch runs at 1/32)
        assert len(calls) == expected, (stem, calls)
        assert all(n.split(".")[0] in (*STEM_LAYERS_DEEP, "layer1") or n.startswith("layer2.0.") for n in calls)


def test_deep_stem_costs_exactly_its_convolutions() -> None:
    """ICNet's multiply-adds grow by exactly the deep stem's convolutions on the 1/2 input and the wider input of
    stage 2's first unit: the count follows the structure, with the released widths (keep rate 0.5)."""
    h, w = 64, 128
    deep = count_madds(build("icnet", stem="deep"), (1, 3, h, w))
    resnet = count_madds(build("icnet", stem="resnet"), (1, 3, h, w))
    stem_px = (h // 4) * (w // 4)  # the stem's output: 1/2 of the 1/2 input
    stage2_px = (h // 8) * (w // 8)
    deep_stem = stem_px * (3 * 9 * 32 + 32 * 9 * 32 + 32 * 9 * 64)
    resnet_stem = stem_px * 3 * 49 * 32
    wider_reads = stage2_px * (64 - 32) * (32 + 128)  # layer1.0.conv1 (32 filters) and its projection (128)
    assert deep - resnet == deep_stem - resnet_stem + wider_reads


@pytest.mark.slow
def test_icnet_speedups_still_hold_with_the_deep_stem() -> None:
    """Table 4's speedups over PSPNet50 compressed by half (9.4×, 6.8×, 5.2×) with both networks on the deep stem;
    the deep stem costs ICNet's 1/2-input branch relatively more than PSPNet50, so the ratios of sub24 and sub124
    fall (at 1024×2048: 11.4 → 10.3 and 8.1 → 7.6) and stay above the paper's."""
    x = (1, 3, 64, 128)
    ratios = {}
    for stem in ("resnet", "deep"):
        base = count_madds(build("pspnet50", keep_rate=0.5, stem=stem), x)
        ratios[stem] = {
            b: base / count_madds(build("icnet", branches=b, stem=stem), x) for b in ("sub4", "sub24", "sub124")
        }
    for b, paper in {"sub4": 9.4, "sub24": 6.8, "sub124": 5.2}.items():
        assert ratios["deep"][b] >= paper, b
    assert ratios["deep"]["sub24"] < ratios["resnet"]["sub24"] and ratios["deep"]["sub124"] < ratios["resnet"]["sub124"]


# --- weights ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resnet_stem_loads_every_backbone_tensor(tv_file, caplog) -> None:
    path, state = tv_file
    with caplog.at_level(logging.INFO, logger="archsearch"):
        model = build("pspnet50", output_stride=32, stem="resnet", weights=str(path))
    for key, value in model.get_submodule("backbone").state_dict().items():
        assert torch.equal(value, state[key]), key
    lines = [r for r in caplog.records if "weights" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "all 106 backbone layers loaded" in lines[0].getMessage()  # 53 convolutions, 53 batch norms


@pytest.mark.slow
def test_deep_stem_reports_the_stem_missing_and_loads_the_rest(tv_file, caplog) -> None:
    """A torchvision file has the 7×7 stem: with stem deep the three stem convolutions, their batch norms and the
    two convolutions that read the stem (128 input channels, not 64) start untrained; everything else loads.
    The missing layers are one warning line with the count."""
    path, state = tv_file
    torch.manual_seed(0)
    reference = build("icnet", branches="sub4", keep_rate=1.0).get_submodule("backbone").state_dict()
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="archsearch"):
        model = build("icnet", branches="sub4", keep_rate=1.0, weights=str(path))
    untrained = set(STEM_LAYERS_DEEP) | set(STEM_READERS)
    for key, value in model.get_submodule("backbone").state_dict().items():
        if _layer(key) in untrained:
            assert torch.equal(value, reference[key]), key  # left at its (seeded) initialisation
        else:
            assert torch.equal(value, state[key]), key
    lines = [r for r in caplog.records if "weights" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    message = lines[0].getMessage()
    assert "102 of 110 backbone layers loaded; 8 missing" in message
    assert str(path) in message and "'resnet' stem" in message
    for layer in untrained:
        assert layer in message


def test_deep_stem_file_loads_completely_into_the_deep_stem(tmp_path: Path) -> None:
    """A deep-base ResNet-50 in the same layout (conv1..3, bn1..3: the PSPNet authors' naming) fits the deep stem
    whole; into a 7×7 stem everything but the stem and its two readers loads."""
    path = tmp_path / "deep.pth"
    state = _write(path, "deep", seed=3, width=SMALL)
    deep = ResNet50(stem="deep", width=SMALL)
    (loaded,) = load_pretrained("test", [deep], path)
    assert loaded.file_stem == "deep" and loaded.missing == () and len(loaded.loaded) == 110
    for key, value in deep.state_dict().items():
        assert torch.equal(value, state[key]), key
    resnet = ResNet50(stem="resnet", units=(1, 1, 1, 1), width=SMALL)
    (loaded,) = load_pretrained("test", [resnet], path)
    assert loaded.missing == ("conv1", "bn1", "layer1.0.conv1", "layer1.0.downsample.0")
    assert torch.equal(submodule(resnet, "layer1.0.conv2", nn.Conv2d).weight, state["layer1.0.conv2.weight"])
    assert not torch.equal(resnet.bn1.weight, state["bn1.weight"])  # same shape, but the 3×3 stem's: not taken


def test_files_that_do_not_fit_name_the_file_and_the_first_key(tmp_path: Path) -> None:
    wrong_shape = tmp_path / "wrong_shape.pth"
    _write(
        wrong_shape,
        "resnet",
        width=SMALL,
        edit=lambda s: s.update({"layer2.1.conv2.weight": torch.zeros(32, 32, 1, 1)}),
    )
    lacking = tmp_path / "lacking.pth"
    _write(lacking, "resnet", width=SMALL, edit=lambda s: s.pop("layer3.4.bn2.running_var"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(16, 3, 7, 7), "extra": _Payload()}, pickled)
    no_stem = tmp_path / "no_stem.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(16, 16, 1, 1)}, no_stem)
    cases = {
        wrong_shape: "'layer2.1.conv2.weight' is [32, 32, 1, 1] in the file, [32, 32, 3, 3] in the network",
        lacking: "no 'layer3.4.bn2.running_var' in the file",
        pickled: "weights_only=True",  # refused, not executed
        no_stem: "no 'conv1.weight'",
        tmp_path / "absent.pth": "no such file",
    }
    for path, needle in cases.items():
        with pytest.raises(KnobError) as err:
            load_pretrained("icnet", [ResNet50(width=SMALL)], path)
        message = str(err.value)
        assert message.startswith(f"builder 'icnet', knob 'weights': {path}: ") and needle in message, message
        assert "\n" not in message


def test_a_file_that_does_not_fit_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    narrow = tmp_path / "narrow.pth"
    _write(narrow, "resnet", width=SMALL)
    argv = [
        "profile",
        "icnet",
        "--set",
        "keep_rate=1",
        "--set",
        "branches=sub4",
        "--input",
        "1,3,64,64",
        "--set",
        f"weights={narrow}",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    # the deep stem skips the file's stem; the first key that must fit and does not:
    assert f"knob 'weights': {narrow}: 'layer1.0.bn1.weight' is [16] in the file, [64] in the network" in err


@pytest.mark.slow
def test_keep_rate_below_1_starts_the_full_network_from_the_file_then_prunes(tv_file) -> None:
    """A narrow network is the pruned full one: build at keep rate 0.75 does not load the file (its shapes are not
    the file's), progressive pruning loads it into the full-width network and keeps its highest-L1 filters."""
    path, state = tv_file
    narrow = build("icnet", branches="sub4", keep_rate=0.75, stem="resnet", weights=str(path))
    # built, not loaded (and no error)
    assert submodule(narrow, "backbone.conv1", nn.Conv2d).weight.shape == (48, 3, 7, 7)
    seen: dict[str, bool] = {}

    def fit(model: nn.Module, iterations: int, phase: str, start: int = 0) -> None:
        seen[phase] = torch.equal(
            submodule(model, "backbone.layer3.0.conv2", nn.Conv2d).weight, state["layer3.0.conv2.weight"]
        )

    knobs = {"branches": "sub4", "keep_rate": 0.75, "stem": "resnet", "weights": str(path)}
    model, _ = progressive("icnet", knobs, 19, fit, iterations=2)
    assert seen == {"full": True, "keep 0.75": False}
    # the stem's RGB inputs are never pruned: its kept filters are exactly the file's 48 highest-L1 ones
    file_conv1 = state["conv1.weight"]
    top = torch.sort(torch.argsort(file_conv1.abs().sum(dim=(1, 2, 3)), descending=True, stable=True)[:48]).values
    assert torch.equal(submodule(model, "backbone.conv1", nn.Conv2d).weight, file_conv1[top])


def test_a_checkpoint_rebuilds_without_the_weights_file(tmp_path: Path) -> None:
    """The trained state dict replaces the pre-trained start: eval works where the ImageNet file is absent."""
    import dataclasses

    from archsearch.builders import config_of
    from archsearch.builders.registry import CONFIG_ATTR
    from archsearch.training import checkpoint

    model = build("sharpmask_fcn", units=[1, 1, 1, 0])  # a builder that loads its file at every setting
    config = config_of(model)  # as trained from a file not here:
    # config.knobs is sharpmask_fcn's Knobs subclass, which has ``weights``; the base class, its static type, does not
    moved = dataclasses.replace(config.knobs, weights=str(tmp_path / "moved_away.pth"))  # type: ignore[call-arg]
    setattr(model, CONFIG_ATTR, dataclasses.replace(config, knobs=moved))
    path = checkpoint.save(model, tmp_path / "trial.pt", data="synthetic")
    rebuilt, _ = checkpoint.load(path)
    assert config_of(rebuilt).knobs.as_dict()["weights"] == str(tmp_path / "moved_away.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
