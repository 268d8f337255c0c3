"""archsearch.cost: parameter count, multiply-adds (convolutions and linear layers, one per MAC), FLOPs, latency."""

import pytest
import torch
import torch.nn as nn

import archsearch
from archsearch.builders.resnet import ProjectionShortcut, ResNet50
from archsearch.cost import CONVENTIONS, count_flops, count_madds, count_params, latency


def test_madds_count_one_per_mac_for_a_known_convolution():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    # k² · H · W · M · N (Yang et al. Eq. 1)
    assert count_madds(conv, (1, 8, 32, 64)) == 9 * 32 * 64 * 8 * 16
    assert count_params(conv) == 9 * 8 * 16


class _Tiny(nn.Module):
    """Every kind of counted layer, and uncounted ops (batch norm, pooling, up-sampling, sums) around them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)  # with a bias: bias adds are not multiply-adds
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, 2, 1, groups=4, bias=False)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))  # 8×16×16
        y = self.grouped(x)  # 8×8×8
        y = y + self.depthwise(y)
        y = self.up(y) + nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear")[:, :4]  # 4×16×16
        return self.fc(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def test_madds_equal_a_hand_count_of_convolutions_and_linear_layers():
    hand = (
        16 * 16 * 8 * 3 * 9  # conv: output pixels · out channels · in channels · k²
        + 8 * 8 * 8 * (8 // 4) * 9  # grouped: in channels per group
        + 8 * 8 * 8 * 1 * 9  # depth-wise
        + 8 * 8 * 8 * 4 * 4  # transposed: per input pixel, in channels · out channels · k²
        + 4 * 5  # linear
    )
    assert count_madds(_Tiny(), (1, 3, 16, 16)) == hand
    assert count_madds(_Tiny(), (2, 3, 16, 16)) == 2 * hand  # per batch element
    assert count_flops(_Tiny(), (1, 3, 16, 16)) > hand  # fvcore adds batch norm, up-sampling and pooling


@pytest.mark.slow
def test_madds_leave_batch_norm_and_upsampling_to_flops():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 4, 1, bias=False))
    assert count_flops(plain, (1, 3, 32, 32)) == count_madds(plain, (1, 3, 32, 32)) == 32 * 32 * (8 * 3 * 9 + 4 * 8)
    for name in ("ndnet", "fast_scnn"):  # batch norm everywhere, bilinear up-sampling of the logits / PPM
        model = archsearch.build(name)
        assert count_flops(model, (1, 3, 64, 128)) > count_madds(model, (1, 3, 64, 128)), name


def test_wu2017_convention_differs_exactly_by_the_projection_shortcuts():
    model = ResNet50(stride_in_1x1=True)
    shortcuts: list[int] = []
    for m in model.modules():
        if isinstance(m, ProjectionShortcut):
            conv = m[0]
            m.register_forward_hook(
                lambda mod, i, o, c=conv: shortcuts.append(o.shape[-2] * o.shape[-1] * c.in_channels * c.out_channels)
            )
    size = (1, 3, 64, 64)
    full = count_madds(model, size)
    assert len(shortcuts) == 4  # one per stage 2–5
    wu = count_madds(model, size, convention="wu2017")
    assert len(shortcuts) == 8 and full - wu == sum(shortcuts[:4]) > 0
    # 64→256 at 1/4, then 256→512, 512→1024, 1024→2048 each at their stage's (halving) resolution
    assert shortcuts[:4] == [16 * 16 * 64 * 256, 8 * 8 * 256 * 512, 4 * 4 * 512 * 1024, 2 * 2 * 1024 * 2048]
    assert count_madds(model, size, convention="conv_linear") == full  # the default
    assert set(CONVENTIONS) >= {"conv_linear", "wu2017"}
    with pytest.raises(ValueError, match="allowed: conv_linear, wu2017"):
        count_madds(model, size, convention="fvcore")


def test_fcn_madds_scale_with_pixel_count():
    """Counting at a smaller input of the same stride alignment and scaling equals the direct count."""
    model = archsearch.build("ndnet")
    small = count_madds(model, (1, 3, 128, 256))
    large = count_madds(model, (1, 3, 256, 512))
    assert large == 4 * small


@pytest.mark.slow
def test_latency_reports_median_p90_and_device_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model.train()
    lat = latency(model, (1, 3, 32, 32), "cpu", warmup=1, repeats=5)
    assert lat.repeats == 5 and lat.input_size == (1, 3, 32, 32)
    assert 0 < lat.median_ms <= lat.p90_ms
    assert lat.device.endswith(f"({lat.threads} thread{'' if lat.threads == 1 else 's'})")
    assert model.training
    assert torch.is_grad_enabled()


def test_latency_in_channels_last_restores_the_model_layout():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    lat = latency(model, (1, 3, 16, 16), "cpu", warmup=0, repeats=2, memory_format="channels_last")
    assert lat.memory_format == "channels_last"
    assert all(p.is_contiguous() for p in model.parameters())


def test_p90_is_the_sample_at_rank_0_9_of_the_sorted_timings():
    from archsearch.cost import p90

    assert p90([10.0, 1, 9, 2, 8, 3, 7, 4, 6, 5]) == 9.0
    assert p90([4.0]) == 4.0
