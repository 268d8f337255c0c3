"""SIGINT/SIGTERM handling (archsearch.util.interrupts): a signal whose exception Python drops inside a finaliser
still stops training and evaluation at the next iteration."""

from __future__ import annotations

import os
import signal
import sys
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

from archsearch.spec import ProxySpec
from archsearch.training import scoring, train
from archsearch.util import interrupts


class Tiny:
    """4 uint8 16×16 images, two classes."""

    info = SimpleNamespace(num_classes=2, ignore_index=255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 2, (16, 16))


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _drop_a_signal_in_a_finaliser(monkeypatch: pytest.MonkeyPatch, signum: int) -> list[Any]:
    """Deliver ``signum`` to this process while a weak-reference finaliser runs; returns what Python reported
    as unraisable (the dropped exception)."""
    dropped: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)

    def finaliser() -> None:
        os.kill(os.getpid(), signum)
        for _ in range(100_000):  # the handler runs here, inside the finaliser
            pass

    class Holder:
        pass

    obj = Holder()
    weakref.finalize(obj, finaliser)
    del obj  # runs the finaliser; its exception does not reach this frame
    return dropped


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_dropped_in_a_finaliser_is_raised_by_check(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    with interrupts.raising():
        interrupts.check()  # nothing pending: no-op
        dropped = _drop_a_signal_in_a_finaliser(monkeypatch, signum)
        assert [type(d.exc_value) for d in dropped] == [interrupts.Signal]
        with pytest.raises(interrupts.Signal) as caught:
            interrupts.check()
        assert caught.value.signum == signum
        interrupts.take()
        interrupts.check()  # taken: no-op
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_training_and_evaluation_stop_on_a_dropped_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ProxySpec(iterations=5, batch=2, lr=0.1, crop=None, scale_range=(1.0, 1.0), flip=False)
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with interrupts.raising():
        _drop_a_signal_in_a_finaliser(monkeypatch, signal.SIGINT)
        trainer = train.Trainer(model, Tiny(), proxy, "cpu", iterations=5)
        with pytest.raises(interrupts.Signal):
            trainer.advance(5)
        assert trainer.done == 0
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        with pytest.raises(interrupts.Signal):
            scoring.evaluate(model, Tiny(), "cpu", batch=2, progress=False)
        interrupts.take()
        trainer.advance(5)  # taken: trains on
        assert trainer.done == 5
        assert scoring.evaluate(model, Tiny(), "cpu", batch=2, progress=False).miou >= 0


def test_handling_sets_and_restores_both_handlers() -> None:
    seen: list[int] = []
    with interrupts.handling(lambda signum, _frame: seen.append(signum)):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
    assert seen == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with interrupts.ignored():
        os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing happens
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
