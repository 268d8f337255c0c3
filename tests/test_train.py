"""The proxy training loop: learns a tiny problem, adds aux and penalty terms, poly LR, seeding, divergence."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.builders.layers import SegOutput
from archsearch.spec import ProxySpec
from archsearch.training.scoring import evaluate
from archsearch.training.train import FitResult, TrainingDiverged, _param_groups, fit, poly_lr

# No crop, no scaling: augmentation (if archsearch.data exists) only flips, which keeps every test's loss exact.
PROXY = ProxySpec(iterations=50, batch=4, lr=0.1, crop=None, scale_range=(1.0, 1.0), flip=True, amp=True)


@pytest.fixture(autouse=True)
def _augment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``archsearch.data.transforms`` (written in parallel), stand in a no-op ``augment``."""
    try:
        import archsearch.data.transforms  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("archsearch.data.transforms")
        stand_in.augment = lambda images, labels, **_: (images, labels)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "archsearch.data.transforms", stand_in)


class TwoColours:
    """8 noisy 32×32 images: red pixels are class 0, blue pixels class 1 (a random rectangle); a few ignored."""

    info = SimpleNamespace(num_classes=2, ignore_index=255)

    def __init__(self, n: int = 8, size: int = 32) -> None:
        g = torch.Generator().manual_seed(1234)
        self.items = []
        red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
        for _ in range(n):
            label = torch.zeros(size, size, dtype=torch.int64)
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 4, size // 2, (2,), generator=g).tolist()
            label[y0 : y0 + h, x0 : x0 + w] = 1
            image = torch.where(label.bool(), blue[:, None, None], red[:, None, None])
            image = image + 0.3 * torch.randn(3, size, size, generator=g)
            label[torch.rand(size, size, generator=g) < 0.02] = 255
            self.items.append((image.float(), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def tiny_net() -> nn.Module:
    """Output stride 2: the loss must up-sample the logits to the label size."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 2, 1),
    )


def test_learns_a_tiny_problem() -> None:
    torch.manual_seed(0)
    model, data = tiny_net(), TwoColours()
    result = fit(model, data, PROXY, torch.device("cpu"), progress=False)
    assert isinstance(result, FitResult)
    assert result.iterations == 50 and len(result.losses) == 50
    assert result.final_loss == result.losses[-1]
    assert result.seconds > 0 and result.images_per_s == pytest.approx(50 * 4 / result.seconds)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first / 4, (first, last)
    assert evaluate(model, data, "cpu", progress=False).miou > 0.9


class ZeroLogits(nn.Module):
    """Train mode: SegOutput with zero main logits (1/2), one aux (weight 0.4, zero logits at 1/8), penalty 0.5.

    The logits are ``scale · features`` with ``scale`` starting at 0, so the first loss is exactly
    ``ln 2 + 0.4 · ln 2 + 0.5``; eval mode returns the main logits only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1)
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor | SegOutput:
        logits = self.scale * self.features(images[:, :, ::2, ::2])
        if not self.training:
            return logits
        aux = self.scale * self.features(images[:, :, ::8, ::8])
        return SegOutput(logits, aux=[(0.4, aux)], penalty=torch.tensor(0.5))


def test_loss_includes_aux_and_penalty() -> None:
    result = fit(ZeroLogits(), TwoColours(), PROXY, "cpu", iterations=1, progress=False)
    assert result.losses[0] == pytest.approx(1.4 * math.log(2) + 0.5, rel=1e-6)


def test_aux_only_is_weighted() -> None:
    class NoPenalty(ZeroLogits):
        def forward(self, images: torch.Tensor) -> SegOutput:
            out = super().forward(images)
            return SegOutput(out.logits, aux=[(0.25, out.aux[0][1]), (0.25, out.aux[0][1])])

    result = fit(NoPenalty(), TwoColours(), PROXY, "cpu", iterations=1, progress=False)
    assert result.losses[0] == pytest.approx(1.5 * math.log(2), rel=1e-6)


def test_nan_loss_raises_at_its_iteration() -> None:
    class GoesNaN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.calls = 0

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            out = self.conv(images)
            return out * float("nan") if self.calls == 4 else out

    with pytest.raises(TrainingDiverged, match="iteration 3 of 10"):
        fit(GoesNaN(), TwoColours(), PROXY, "cpu", iterations=10, progress=False)


def _fitted_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_net()
    fit(model, TwoColours(), PROXY, "cpu", seed=seed, iterations=5, progress=False)
    return model.state_dict()


def test_same_seed_same_weights() -> None:
    a, b, c = _fitted_weights(7), _fitted_weights(7), _fitted_weights(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed picks the batches


def test_poly_lr_values() -> None:
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5**0.9)  # 0.0053589
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.0053589, abs=1e-7)
    assert poly_lr(0.01, 99, 100, 0.9) == pytest.approx(0.01 * 0.01**0.9)
    assert poly_lr(0.02, 3, 4, 1.0) == pytest.approx(0.005)


def test_fit_steps_with_poly_lr_scaled_and_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float, float]] = []
    step = torch.optim.SGD.step

    def recording_step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        decay, no_decay = self.param_groups
        seen.append((decay["lr"], decay["momentum"], decay["weight_decay"]))
        assert no_decay["lr"] == decay["lr"] and no_decay["weight_decay"] == 0.0
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    proxy = replace(PROXY, iterations=1000, lr=0.1, poly_power=0.9, momentum=0.8, weight_decay=1e-3)
    result = fit(tiny_net(), TwoColours(), proxy, "cpu", iterations=4, lr_scale=0.5, progress=False)
    assert result.iterations == 4
    assert [lr for lr, _, _ in seen] == pytest.approx([0.05 * (1 - i / 4) ** 0.9 for i in range(4)])
    assert {(m, wd) for _, m, wd in seen} == {(0.8, 1e-3)}


def test_fit_continues_one_poly_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phases of progressive pruning: iterations 6…9 of one 10-iteration schedule, no restart at the base rate."""
    seen: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    proxy = replace(PROXY, lr=0.1, poly_power=0.9)
    fit(tiny_net(), TwoColours(), proxy, "cpu", iterations=4, schedule=(6, 10), progress=False)
    assert seen == pytest.approx([0.1 * (1 - i / 10) ** 0.9 for i in range(6, 10)])
    with pytest.raises(ValueError, match="schedule"):
        fit(tiny_net(), TwoColours(), proxy, "cpu", iterations=5, schedule=(6, 10), progress=False)


def test_no_weight_decay_on_batch_norm_and_bias() -> None:
    decay, no_decay = _param_groups(tiny_net(), 5e-4)
    assert [tuple(p.shape) for p in decay["params"]] == [(8, 3, 3, 3), (2, 8, 1, 1)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(8,), (8,), (2,)]  # BN weight, BN bias, conv bias
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)


def test_zero_iterations_and_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    empty = fit(tiny_net(), TwoColours(), PROXY, "cpu", iterations=0, progress=False)
    assert (empty.iterations, empty.losses) == (0, []) and math.isnan(empty.final_loss)
    fit(tiny_net(), TwoColours(), PROXY, "cpu", iterations=2, progress=False)
    assert capsys.readouterr().err == ""
    fit(tiny_net(), TwoColours(), PROXY, "cpu", iterations=2, progress=True, desc="phase-1")
    assert "phase-1" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision is used on CUDA only")
def test_mixed_precision_on_cuda() -> None:
    torch.manual_seed(0)
    model, data = tiny_net(), TwoColours()
    result = fit(model, data, PROXY, torch.device("cuda"), progress=False)
    assert sum(result.losses[-5:]) < sum(result.losses[:5]) / 4
    assert evaluate(model, data, "cuda", progress=False).miou > 0.9


def test_cascade_guidance_is_scored_against_labels_at_its_own_resolution() -> None:
    """ICNet (Sec. 4.1): each guidance term meets the ground truth down-sampled to 1/16, 1/8, 1/4, not
    full-resolution labels under up-sampled logits."""
    from archsearch.builders.layers import SegOutput
    from archsearch.training.train import labels_to, segmentation_loss

    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :2] = 255
    coarse = torch.randn(2, 3, 4, 4)  # a 1/4 guidance map
    main = torch.randn(2, 3, 8, 8)
    small = labels_to(labels, (4, 4))
    assert torch.equal(small, labels[:, ::4, ::4])  # nearest: every 4th label, ignored rows stay ignored
    expected = F.cross_entropy(main, labels_to(labels, (8, 8)), ignore_index=255) + 0.4 * F.cross_entropy(
        coarse, small, ignore_index=255
    )
    loss = segmentation_loss(SegOutput(main, [(0.4, coarse)], labels_at_logits=True), labels, 255)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    upsampled = segmentation_loss(SegOutput(main, [(0.4, coarse)]), labels, 255)
    assert abs(float(upsampled) - float(loss)) > 1e-3
    import archsearch

    icnet = archsearch.build("icnet", 19, branches="sub124", keep_rate=0.25).train()
    out = icnet(torch.randn(2, 3, 64, 64))
    assert out.labels_at_logits and [a.shape[-1] for _, a in out.aux] == [4, 8]
