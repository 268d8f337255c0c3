"""measure: parameter count, fvcore multiply-adds (one per MAC) and latency."""

import torch
import torch.nn as nn

import archsearch
from archsearch.measure import count_madds, count_params, latency


def test_madds_count_one_per_mac_for_a_known_convolution():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    # k² · H · W · M · N (Yang et al. Eq. 1)
    assert count_madds(conv, (1, 8, 32, 64)) == 9 * 32 * 64 * 8 * 16
    assert count_params(conv) == 9 * 8 * 16


def test_fcn_madds_scale_with_pixel_count():
    """Counting at a smaller input of the same stride alignment and scaling equals the direct count."""
    model = archsearch.build("ndnet")
    small = count_madds(model, (1, 3, 128, 256))
    large = count_madds(model, (1, 3, 256, 512))
    assert large == 4 * small


def test_latency_reports_median_p90_and_device_and_restores_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    model.train()
    lat = latency(model, (1, 3, 32, 32), "cpu", warmup=1, repeats=5)
    assert lat.repeats == 5 and lat.input_size == (1, 3, 32, 32)
    assert 0 < lat.median_ms <= lat.p90_ms
    assert "threads" in lat.device
    assert model.training
    assert torch.is_grad_enabled()


def test_latency_in_channels_last_restores_the_model_layout():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    lat = latency(model, (1, 3, 16, 16), "cpu", warmup=0, repeats=2, memory_format="channels_last")
    assert lat.memory_format == "channels_last"
    assert all(p.is_contiguous() for p in model.parameters())


def test_p90_is_the_sample_at_rank_0_9_of_the_sorted_timings():
    from archsearch.measure import p90

    assert p90([10.0, 1, 9, 2, 8, 3, 7, 4, 6, 5]) == 9.0
    assert p90([4.0]) == 4.0
