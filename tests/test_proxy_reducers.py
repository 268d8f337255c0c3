"""Issue 18: the proxy's memory layout, common random numbers and the weight average — what each changes, and
that none of them changes what a stored study or calibration run means while it holds its old behaviour."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from archsearch.calibrate import recipe
from archsearch.spec import ProxySpec, parse
from archsearch.spec.fingerprint import differences, fingerprint
from archsearch.training import averaging, layout, scoring, seeds
from archsearch.training.train import Trainer, fit

PROXY = ProxySpec(iterations=6, batch=2, lr=0.05, crop=None, scale_range=(1.0, 1.0), flip=True)
RAW = {
    "name": "t",
    "builder": "ndnet",
    "knobs": {"expansion": {"choices": [2, 4]}},
    "data": {"name": "synthetic", "train_images": 4, "val_images": 2},
    "proxy": {"iterations": 3},
}


class Squares:
    """8 random 16×16 images with a two-class label each; records which indices the loader asked for."""

    info = SimpleNamespace(num_classes=2, ignore_index=255)

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(8, 3, 16, 16, generator=g)
        self.labels = (self.images[:, 0] > 0).long()
        self.asked: list[int] = []

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.asked.append(int(i))
        return self.images[i], self.labels[i]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))


def spec_with(**proxy: object):
    return parse({**RAW, "proxy": {**RAW["proxy"], **proxy}}, file="t.yaml")


# --- memory layout ----------------------------------------------------------------------------------------------


def test_auto_layout_is_channels_last_on_cpu_and_cuda_only() -> None:
    assert layout.memory_format("auto", "cpu") == torch.channels_last
    assert layout.memory_format("auto", "cuda") == torch.channels_last
    assert layout.memory_format("auto", "mps") == torch.contiguous_format
    assert layout.memory_format("nchw", "cpu") == torch.contiguous_format
    assert layout.memory_format("channels_last", "mps") == torch.channels_last
    with pytest.raises(ValueError, match="allowed: auto, channels_last, nchw"):
        layout.memory_format("nhwc", "cpu")
    assert ProxySpec().memory_format == "auto"


def test_layout_of_a_model_ignores_weights_that_are_both() -> None:
    pointwise = nn.Conv2d(4, 8, 1)  # (8, 4, 1, 1): NCHW- and channels-last-contiguous at once
    assert layout.layout_of(layout.to_layout(nn.Sequential(pointwise), torch.channels_last)) == torch.contiguous_format
    model = layout.to_layout(net(), torch.channels_last)
    assert layout.layout_of(model) == torch.channels_last
    assert layout.layout_of(net()) == torch.contiguous_format
    x = torch.randn(2, 3, 5, 5)
    assert layout.to_layout(x, torch.channels_last).is_contiguous(memory_format=torch.channels_last)
    assert layout.to_layout(torch.ones(3), torch.channels_last).shape == (3,)


def test_channels_last_trains_as_nchw_does_to_rounding() -> None:
    trained = {}
    for fmt in ("channels_last", "nchw"):
        model = net()
        result = fit(model, Squares(), replace(PROXY, memory_format=fmt), "cpu", seed=3, progress=False)
        trained[fmt] = (model, result.losses)
    cl, nchw = trained["channels_last"][0], trained["nchw"][0]
    assert cl[0].weight.is_contiguous(memory_format=torch.channels_last) and not cl[0].weight.is_contiguous()
    assert nchw[0].weight.is_contiguous()
    assert trained["channels_last"][1] == pytest.approx(trained["nchw"][1], rel=1e-4)
    for a, b in zip(cl.state_dict().values(), nchw.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)
    # evaluation follows the model's layout by default, or the one asked for; the scores agree
    data = Squares()
    got = scoring.evaluate(cl, data, "cpu", batch=4, progress=False)
    asked = scoring.evaluate(cl, data, "cpu", batch=4, progress=False, memory_format="nchw")
    assert layout.layout_of(cl) == torch.contiguous_format  # put in NCHW as asked
    assert got.miou == pytest.approx(asked.miou, abs=1e-6)


# --- common random numbers ---------------------------------------------------------------------------------------


def _asked(seed: int, data_seed: int | None) -> list[int]:
    data = Squares()
    fit(net(), data, PROXY, "cpu", seed=seed, data_seed=data_seed, progress=False)
    return data.asked


def test_data_seed_fixes_the_batches_whatever_the_seed() -> None:
    assert _asked(1, 99) == _asked(2, 99)  # the same batches for two trials with the same data seed
    assert _asked(1, 99) != _asked(1, 98)
    assert _asked(1, None) == _asked(1, 1)  # without one the data follow the trial's seed, as before
    assert len(_asked(1, None)) == PROXY.iterations * PROXY.batch


def test_data_seeds_are_a_function_of_search_seed_data_and_proxy_only() -> None:
    off = spec_with()
    assert seeds.data_seeds(off, 2) == [None, None]
    on = spec_with(common_random_numbers=True)
    streams = seeds.data_seeds(on, 3)
    assert len(set(streams)) == 3 and all(isinstance(s, int) for s in streams)
    assert seeds.data_seeds(on, 2) == streams[:2]  # the k-th training's stream does not depend on their count
    other_space = parse(
        {
            **RAW,
            "knobs": {"widths": {"choices": [[12, 24, 48]]}},
            "proxy": {"iterations": 3, "common_random_numbers": True},
        },
        file="u.yaml",
    )
    assert seeds.data_seeds(other_space, 3) == streams  # the same batches for every architecture
    assert seeds.data_seeds(spec_with(common_random_numbers=True, memory_format="nchw"), 3) == streams
    assert seeds.data_seeds(spec_with(common_random_numbers=True, iterations=4), 3) != streams
    reseeded = parse(
        {**RAW, "proxy": {"iterations": 3, "common_random_numbers": True}, "search": {"seed": 1}}, file="t.yaml"
    )
    assert seeds.data_seeds(reseeded, 3) != streams


# --- weight average -----------------------------------------------------------------------------------------------


def test_ema_decay_warms_up_then_holds() -> None:
    assert averaging.decay_at(0.99, 0) == pytest.approx(0.1)
    assert averaging.decay_at(0.99, 10) == pytest.approx(11 / 20)
    assert averaging.decay_at(0.9, 1000) == 0.9
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        averaging.ema(net(), 1.0)


def test_ema_averages_weights_and_batch_norm_buffers() -> None:
    model = nn.BatchNorm1d(2)
    avg = averaging.ema(model, 0.5)
    values = [1.0, 3.0, 7.0]
    expected = None
    for n, v in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(v)
            model.running_mean.fill_(v)
            model.num_batches_tracked.fill_(n + 5)
        avg.update_parameters(model)
        d = averaging.decay_at(0.5, n)
        expected = v if expected is None else d * expected + (1 - d) * v
    assert float(avg.module.weight[0].detach()) == pytest.approx(expected)
    assert float(avg.module.running_mean[0]) == pytest.approx(expected)  # statistics of its own
    assert int(avg.module.num_batches_tracked) == 7  # integer buffers are copied


def test_fit_with_ema_leaves_the_average_and_the_trainer_scores_it() -> None:
    proxy = replace(PROXY, ema_decay=0.5, memory_format="nchw")
    trainer = Trainer(net(), Squares(), proxy, "cpu", seed=3)
    trainer.advance(PROXY.iterations)
    assert trainer.ema is not None and trainer.scored_model is trainer.ema.module
    raw = replace(PROXY, memory_format="nchw")
    plain = Trainer(net(), Squares(), raw, "cpu", seed=3)
    plain.advance(PROXY.iterations)
    assert plain.scored_model is plain.model and plain.ema is None
    # the average does not change training: the raw weights agree
    assert all(
        torch.equal(a, b)
        for a, b in zip(trainer.model.state_dict().values(), plain.model.state_dict().values(), strict=True)
    )
    model = net()
    fit(model, Squares(), proxy, "cpu", seed=3, progress=False)
    averaged = trainer.ema.module.state_dict()
    assert all(torch.equal(v, averaged[k]) for k, v in model.state_dict().items())
    assert not torch.equal(model[0].weight, plain.model[0].weight)


# --- comparability ----------------------------------------------------------------------------------------------


def test_layout_never_and_new_keys_at_old_values_never_enter_fingerprint_or_recipe() -> None:
    default = spec_with()
    for key in ("memory_format", "common_random_numbers", "ema_decay"):
        assert key not in fingerprint(default)["proxy"]
    nchw = spec_with(memory_format="nchw")
    assert fingerprint(nchw) == fingerprint(default) and recipe(nchw) == recipe(default)
    crn = spec_with(common_random_numbers=True)
    ema = spec_with(ema_decay=0.9)
    assert differences(fingerprint(default), fingerprint(crn)) == ["proxy.common_random_numbers null → true"]
    assert differences(fingerprint(default), fingerprint(ema)) == ["proxy.ema_decay null → 0.9"]
    assert len({recipe(default), recipe(crn), recipe(ema)}) == 3


@pytest.mark.slow
def test_a_study_with_common_random_numbers_and_ema(tmp_path, monkeypatch) -> None:
    import optuna

    from archsearch import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    raw = {
        "name": "crn",
        "builder": "ndnet",
        "knobs": {"widths": {"choices": [[8, 16, 32], [12, 24, 48]]}},
        "objectives": [{"name": "miou", "direction": "maximize"}],
        "data": {"name": "synthetic", "train_images": 4, "val_images": 2, "size": [32, 64]},
        "proxy": {
            "iterations": 3,
            "batch": 2,
            "scale": 1.0,
            "eval_batch": 2,
            "seeds": 2,
            "common_random_numbers": True,
            "ema_decay": 0.9,
        },
        "target": {"input": [1, 3, 32, 64], "repeats": 2, "warmup": 0, "device": "cpu", "max_seconds": 0.2},
        "search": {"sampler": "random", "seed": 0},
    }
    path = tmp_path / "crn.yaml"
    path.write_text(json.dumps(raw))
    url = f"sqlite:///{tmp_path / 'crn.db'}"
    assert cli.main(["run", str(path), "--storage", url, "--trials", "2", "-q"]) == 0
    trials = optuna.load_study(study_name="crn", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    a, b = (t.user_attrs for t in trials)
    assert a["data_seeds"] == b["data_seeds"] == seeds.data_seeds(parse(raw, file=str(path)), 2)
    assert len(set(a["data_seeds"])) == 2 and a["seeds"] != b["seeds"]  # the same batches, their own initialisation
    assert a["budget"]["proxy"]["ema_decay"] == 0.9 and "memory_format" not in a["budget"]["proxy"]
