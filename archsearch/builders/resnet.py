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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

FULL_UNITS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck mid widths of stages 2–5; outputs are 4×
EXPANSION = 4


def scaled(channels: int, width: float) -> int:
    """Channels kept at a keep rate: ``round(width·channels)``, at least 1."""
    return max(1, int(round(width * channels)))


class ProjectionShortcut(nn.Sequential):
    """The projection shortcut of a stage's first unit: a strided 1×1 convolution and batch norm (``downsample``).

    A class of its own so that cost counting can recognise it (``cost_role``): Wu et al. (2017) evidently leave
    these four 1×1 convolutions out of their multiply-adds (``measure.CONVENTIONS["wu2017"]``). Parameter names
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

    def __init__(
        self,
        units: Sequence[int] = FULL_UNITS,
        output_stride: int = 32,
        width: float = 1.0,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        units = tuple(int(u) for u in units)
        if len(units) != 4 or any(u < 0 or u > f for u, f in zip(units, FULL_UNITS)):
            raise ValueError(f"units {list(units)}: each stage keeps 0..{list(FULL_UNITS)} units")
        if any(units[i] == 0 for i in range(3)):
            raise ValueError(f"units {list(units)}: only stage 5 may be removed entirely")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {output_stride}: allowed 8, 16, 32")
        self.units = units
        self.output_stride = output_stride
        self.width = width
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
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
        in_ch = stem
        self.out_channels: list[int] = []
        self.layer1 = self.layer2 = self.layer3 = self.layer4 = None  # type: ignore[assignment]
        prev_dilation = 1
        for i, (n, mid) in enumerate(zip(units, STAGE_WIDTHS)):
            mid_c, out_c = scaled(mid, width), scaled(mid * EXPANSION, width)
            blocks: list[nn.Module] = []
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
                first = blocks[0]
                first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)  # type: ignore[union-attr]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks) if n else None)
            self.out_channels.append(out_c if n else 0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats: list[torch.Tensor | None] = []
        for i in range(4):
            layer = getattr(self, f"layer{i + 1}")
            x = layer(x) if layer is not None else None
            feats.append(x)
            if x is None:
                break
        feats += [None] * (4 - len(feats))
        return feats


def load_torchvision_weights(model: nn.Module, path: str | Path, prefix: str = "") -> list[str]:
    """Load a torchvision-layout ResNet-50 state dict from a local file into ``model`` (``weights_only``).

    ``prefix`` is where the backbone sits inside ``model`` (e.g. ``"backbone."``). Entries of removed units
    (and the ImageNet ``fc``) are skipped; shapes must match (a narrower network cannot take full weights —
    prune it instead). Returns the skipped keys.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    take, skipped = {}, []
    for key, value in state.items():
        target = prefix + key
        if target in own:
            if own[target].shape != value.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model {tuple(own[target].shape)}")
            take[target] = value
        else:
            skipped.append(key)
    missing = [k for k in own if k.startswith(prefix) and k not in take and not k.endswith("num_batches_tracked")]
    backbone_missing = [k for k in missing if k[len(prefix):].split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}]
    if backbone_missing:
        raise ValueError(f"{path}: not a torchvision ResNet-50 state dict; missing {backbone_missing[:3]}...")
    model.load_state_dict(take, strict=False)
    return skipped
