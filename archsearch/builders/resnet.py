"""ResNet-50 backbone shared by the Wu et al. (2017) and ICNet/PSPNet builders.

torchvision's layout and parameter names (``conv1``, ``bn1``, ``layer1``..``layer4``, ``Bottleneck`` with
``conv1..3``/``bn1..3``/``downsample``), so torchvision-layout weights load from a local file, with three knobs
the papers need:

- ``units`` — residual units kept per stage (stages 2–5 = ``layer1``..``layer4``), at most [3, 4, 6, 3].
  Wu et al. Sec. 3.5/4.5: the first unit of a stage (the one with the non-identity mapping) is kept whenever
  the stage is, so keeping ``k`` units keeps units ``0..k-1``; stage 5 may be 0 (then ``layer4`` is absent).
- ``output_stride`` 8 | 16 | 32 — dilation instead of down-sampling in stage 5 (16), or stages 4 and 5 (8).
- ``width`` — the kernel keep rate of Zhao et al. (ICNet Sec. 4): every convolution keeps ``round(width·C)``
  filters (the physically narrower network that L1 pruning produces).
- ``stride_in_1x1`` — where the first unit of stages 3–5 down-samples: torchvision's "v1.5" strides the 3×3
  (False); ResNet-50 as published by He et al. and the Caffe/MXNet models the papers used stride the first 1×1
  (True), which is cheaper (3.9 vs 4.1 GMAdds at 224×224). Shapes are the same either way, so
  torchvision-layout weights load into both.
- ``stem`` — ``"resnet"``: torchvision's 7×7 stride-2 convolution (64 filters); ``"deep"``: the "deep base" of
  PSPNet that ICNet inherits — three 3×3 convolutions of 64, 64 and 128 filters, the first of stride 2, each with
  batch norm and ReLU (``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``, the layout of the PSPNet
  authors' code), so stage 2 reads 128 channels. Both end with the 3×3 stride-2 max pooling.

:func:`load_pretrained` loads a local ImageNet state dict (torchvision layout) with ``weights_only=True``. The
stem is loaded only when the file has the network's stem (a 7×7 ``conv1.weight`` is the ``resnet`` stem, a 3×3
one the ``deep`` stem); otherwise the stem and the two convolutions that read its output (``layer1.0.conv1``,
``layer1.0.downsample.0``: 64 input channels after the 7×7 stem, 128 after the deep one) stay at their
initialisation and are reported, with every other backbone layer left unloaded, in one log line with a count.
Any other key the network has and the file lacks, or has in another shape, is an error naming the file and the
first such key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from archsearch.builders.registry import knob
from archsearch.util.errors import KnobError

FULL_UNITS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck mid widths of stages 2–5; outputs are 4×
EXPANSION = 4
STEMS = ("resnet", "deep")
DEEP_STEM_WIDTHS = (64, 64, 128)  # PSPNet's deep base: conv1_1 (stride 2), conv1_2, conv1_3
STEM_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
STEM_READERS = ("layer1.0.conv1", "layer1.0.downsample.0")  # the convolutions that read the stem's output

log = logging.getLogger(__name__)


def stem_knob(default: str, paper: str) -> Any:
    """The ``stem`` knob of a ResNet-50 builder (declared once, so every builder describes it alike)."""
    return knob(
        default,
        paper=paper,
        doc="resnet: 7×7 stride-2 conv (torchvision; loads from torchvision weights); deep: three 3×3 convs "
        "64-64-128, the first of stride 2 (PSPNet/ICNet); both then max-pool",
        choices=STEMS,
    )


def scaled(channels: int, width: float) -> int:
    """Channels kept at a keep rate: ``round(width·channels)``, at least 1."""
    return max(1, round(width * channels))


class ProjectionShortcut(nn.Sequential):
    """The projection shortcut of a stage's first unit: a strided 1×1 convolution and batch norm (``downsample``).

    A class of its own so that cost counting can recognise it (``cost_role``): Wu et al. (2017) evidently leave
    these four 1×1 convolutions out of their multiply-adds (``archsearch.cost.CONVENTIONS["wu2017"]``). Parameter names
    are torchvision's (``downsample.0``, ``downsample.1``).
    """

    cost_role = "projection_shortcut"

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3×3 convolution, "ResNet v1.5")."""

    def __init__(
        self, in_ch: int, mid: int, out_ch: int, stride: int = 1, dilation: int = 1, project: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if project:
            self.downsample = ProjectionShortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 feature extractor. ``forward`` returns the outputs of stages 2–5 (``None`` for a removed stage).

    Stage 2 is at 1/4 of the input, stage 3 at 1/8, stages 4 and 5 at 1/16 and 1/32 unless dilated.
    """

    # stages 2–5, set in __init__ (a stage without units is None: :meth:`forward` stops there)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        units: Sequence[int] = FULL_UNITS,
        output_stride: int = 32,
        width: float = 1.0,
        stride_in_1x1: bool = False,
        stem: str = "resnet",
    ) -> None:
        super().__init__()
        # units, output_stride and stem are validated once, by the builders' knobs (spec/knob boundary)
        units = tuple(int(u) for u in units)
        self.units = units
        self.output_stride = output_stride
        self.width = width
        self.stem = stem
        if stem == "resnet":
            stem_out = scaled(64, width)
            self.conv1 = nn.Conv2d(3, stem_out, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_out)
        else:
            w1, w2, stem_out = (scaled(c, width) for c in DEEP_STEM_WIDTHS)
            self.conv1 = nn.Conv2d(3, w1, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w1)
            self.conv2 = nn.Conv2d(w1, w2, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(w2)
            self.conv3 = nn.Conv2d(w2, stem_out, 3, 1, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(stem_out)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        # (stride, dilation) per stage, torchvision's replace_stride_with_dilation for stages 4 and 5.
        dilate = {32: (False, False), 16: (False, True), 8: (True, True)}[output_stride]
        strides, dilations, dilation = [1, 2], [1, 1], 1
        for stage_dilated in dilate:
            if stage_dilated:
                dilation *= 2
            strides.append(1 if stage_dilated else 2)
            dilations.append(dilation)
        in_ch = stem_out
        self.out_channels: list[int] = []
        prev_dilation = 1
        for i, (n, mid) in enumerate(zip(units, STAGE_WIDTHS, strict=False)):
            mid_c, out_c = scaled(mid, width), scaled(mid * EXPANSION, width)
            blocks: list[Bottleneck] = []
            for j in range(n):
                first = j == 0
                blocks.append(
                    Bottleneck(
                        in_ch,
                        mid_c,
                        out_c,
                        stride=strides[i] if first else 1,
                        dilation=prev_dilation if first else dilations[i],
                        project=first,
                    )
                )
                in_ch = out_c
            prev_dilation = dilations[i]
            if stride_in_1x1 and blocks and strides[i] == 2:
                head = blocks[0]
                head.conv1.stride, head.conv2.stride = (2, 2), (1, 1)
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks) if n else None)
            self.out_channels.append(out_c if n else 0)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stem and the max pooling: 1/4 of the input."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.stem == "deep":
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.forward_stem(x)
        feats: list[torch.Tensor | None] = []
        for i in range(4):
            layer = getattr(self, f"layer{i + 1}")
            if layer is None:
                break
            x = layer(x)
            feats.append(x)
        feats += [None] * (4 - len(feats))
        return feats


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the network; the message is one line naming the file."""


@dataclass(frozen=True)
class Loaded:
    """What :func:`load_torchvision_weights` did: the file's stem, the backbone layers (convolutions and batch
    norms, by name) loaded from the file and those left at their initialisation."""

    file_stem: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 — unpickling refused, not a torch file, truncated: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a state dict torch.load(weights_only=True) can read ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def _stem_of(state: dict[str, torch.Tensor], path: Path) -> str:
    """``resnet`` for a 7×7 ``conv1.weight``, ``deep`` for a 3×3 one."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise WeightsError(f"{path}: no 'conv1.weight' convolution; not a torchvision-layout ResNet-50 state dict")
    return "resnet" if conv1.shape[-1] == 7 else "deep"


def _layer(key: str) -> str:
    return key.rsplit(".", 1)[0]


def load_torchvision_weights(backbone: ResNet50, path: str | Path) -> Loaded:
    """Load a torchvision-layout ResNet-50 state dict from a local file into ``backbone`` (``weights_only``).

    Entries of removed units and the ImageNet ``fc`` are ignored. When the file's stem is not the backbone's, the
    stem and :data:`STEM_READERS` keep their initialisation. Every other tensor of the backbone must be in the
    file in the same shape (a narrower network cannot take full-width weights: prune the full one instead);
    otherwise :class:`WeightsError` names the file and the first key that does not fit.
    """
    path = Path(path)
    state = _read_state(path)
    file_stem = _stem_of(state, path)
    skip_stem = file_stem != backbone.stem
    take: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, value in backbone.state_dict().items():
        layer = _layer(key)
        if skip_stem and (layer in STEM_LAYERS or layer in STEM_READERS):
            if layer not in missing:
                missing.append(layer)
            continue
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise WeightsError(f"{path}: no '{key}' in the file; not a torchvision-layout ResNet-50 state dict")
        if state[key].shape != value.shape:
            raise WeightsError(
                f"{path}: '{key}' is {list(state[key].shape)} in the file, {list(value.shape)} in the network "
                f"(first mismatching key)"
            )
        take[key] = state[key]
    backbone.load_state_dict(take, strict=False)
    loaded = tuple(dict.fromkeys(_layer(k) for k in take if not k.endswith("num_batches_tracked")))
    return Loaded(file_stem, loaded, tuple(missing))


def load_pretrained(builder: str, backbones: Sequence[ResNet50], path: str | Path) -> list[Loaded]:
    """Load ``path`` into each of a builder's backbones and report it in ONE log line: how many backbone layers
    were loaded and which ones were not (a warning when any was not). A file that cannot be read or does not fit
    is a :class:`~archsearch.errors.KnobError` on the ``weights`` knob (one line naming the file and key)."""
    try:
        results = [load_torchvision_weights(b, path) for b in backbones]
    except WeightsError as exc:
        raise KnobError(builder, "weights", str(exc)) from None
    loaded = sum(len(r.loaded) for r in results)
    missing = [m for r in results for m in r.missing]
    total = loaded + len(missing)
    stems = {b.stem for b in backbones}
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        why = f" (the file has the {results[0].file_stem!r} stem, the network {'/'.join(sorted(stems))!r})"
        log.warning(
            "%s: weights %s: %d of %d backbone layers loaded; %d missing, left at initialisation%s: %s",
            builder,
            path,
            loaded,
            total,
            len(missing),
            why,
            names,
        )
    else:
        log.info("%s: weights %s: all %d backbone layers loaded", builder, path, total)
    return results
