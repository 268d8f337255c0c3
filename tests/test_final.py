"""Final training (``archsearch train``): resumable to the same weights, recorded beside the study, recipe kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import optuna
import pytest
import torch

from archsearch import builders, cli
from archsearch import spec as spec_mod
from archsearch.data import synthetic
from archsearch.search import final
from archsearch.spec import DataSpec, ProxySpec
from archsearch.training import checkpoint, train
from archsearch.util.errors import ArchsearchError

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [
    "data.name=synthetic",
    "data.train_images=4",
    "data.val_images=2",
    "proxy.iterations=2",
    "proxy.batch=2",
    "proxy.scale=0.0625",
    "target.input=[1,3,64,128]",
    "target.repeats=2",
    "target.warmup=1",
    "target.device=cpu",
]
TINY = [x for s in SETTINGS for x in ("--set", s)]
KNOBS = {"widths": [8, 16, 32], "depths": [1, 1, 1], "expansion": 1}


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    return tmp_path


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_a_trainer_resumed_from_its_state_reaches_the_weights_of_an_uninterrupted_fit(tmp_path, ema_decay):
    data = synthetic.load(DataSpec(name="synthetic", train_images=4, cache_dir=str(tmp_path)), "train", 0.0625)
    proxy = ProxySpec(iterations=6, batch=2, scale=0.0625, ema_decay=ema_decay)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return builders.build("ndnet", 19, **KNOBS)

    whole = train.Trainer(fresh(), data, proxy, "cpu", seed=3)
    whole.advance(6)
    first = train.Trainer(fresh(), data, proxy, "cpu", seed=3)
    first.advance(2)
    state_file = tmp_path / "state.pt"
    torch.save(first.state_dict(), state_file)
    first.advance(1)  # work after the checkpoint is lost, as a kill -9 loses it
    torch.manual_seed(123)  # another process: other global random state, other initial weights
    resumed = train.Trainer(builders.build("ndnet", 19, **KNOBS), data, proxy, "cpu", seed=3)
    resumed.load_state_dict(torch.load(state_file, weights_only=True))
    assert resumed.done == 2
    resumed.advance(4)
    a, b = _weights(whole.model), _weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = _weights(whole.scored_model), _weights(resumed.scored_model)  # the moving average too, when on
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # and the check can fail: one iteration fewer gives other weights
    short = train.Trainer(fresh(), data, proxy, "cpu", seed=3)
    short.advance(5)
    assert not all(torch.equal(a[k], v) for k, v in _weights(short.model).items())


def test_budget_from_epochs_and_its_refusals():
    spec = spec_mod.load(str(ROOT / "spaces" / "ndnet.yaml"), SETTINGS)
    assert final.budget(spec, 10, epochs=3) == final.Budget(iterations=15, scale=0.0625, eval_every=2)
    assert final.budget(spec, 10, iterations=40, eval_every=7, scale=0.5) == final.Budget(40, 0.5, 7)
    with pytest.raises(ArchsearchError, match="exactly one of --iterations and --epochs"):
        final.budget(spec, 10)
    with pytest.raises(ArchsearchError, match=r"--scale 1.5: must be in \(0, 1\]"):
        final.budget(spec, 10, iterations=3, scale=1.5)


def _last_weights(url: str, name: str, number: int) -> dict[str, torch.Tensor]:
    study = optuna.load_study(study_name=f"{name}{final.STUDY_SUFFIX}", storage=url)
    t = next(x for x in study.get_trials(deepcopy=False) if x.number == number)
    store = str(Path("runs") / name / "checkpoints")
    model, _ = checkpoint.load(checkpoint.fetch(str(Path(store).resolve()), t.user_attrs["last_artifact"]))
    return _weights(model)


@pytest.mark.slow
def test_train_a_trial_interrupted_by_sigterm_continues_to_the_same_weights(in_tmp, monkeypatch, capsys):
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    assert cli.main(["run", spec_file, "--trials", "1", "-q", *TINY]) == 0
    url = "sqlite:///runs/ndnet.db"
    args = ["train", spec_file, "--trial", "0", "--iterations", "6", "--eval-every", "3", "-q", *TINY]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "final training of trial 0" in out and "best val mIoU" in out
    study = optuna.load_study(study_name="ndnet" + final.STUDY_SUFFIX, storage=url)
    done = study.get_trials(deepcopy=False)[-1]
    assert done.state.name == "COMPLETE" and [h["iteration"] for h in done.user_attrs["history"]] == [3, 6]
    assert done.value == max(h["miou"] for h in done.user_attrs["history"])
    uninterrupted = _last_weights(url, "ndnet", done.number)
    # the same command again: already done, nothing trained
    assert cli.main(args) == 0 and "already done" in capsys.readouterr().out

    real_advance = train.Trainer.advance
    calls = {"n": 0}

    def advance_then_sigterm(self, iterations, **kw):
        result = real_advance(self, iterations, **kw)
        calls["n"] += 1
        if calls["n"] == 4:  # after iteration 4: between two evaluations
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(train.Trainer, "advance", advance_then_sigterm)
    again = ["train", spec_file, "--trial", "0", "--iterations", "6", "--eval-every", "3", "--restart", "-q", *TINY]
    assert cli.main(again) == 143
    err = capsys.readouterr().err
    assert "archsearch: stopped: stopped by SIGTERM at iteration 4 of 6" in err and "Traceback" not in err
    monkeypatch.setattr(train.Trainer, "advance", real_advance)
    # another recipe for the interrupted training is refused, naming the key
    changed = ["train", spec_file, "--trial", "0", "--iterations", "6", "--eval-every", "2", "-q", *TINY]
    assert cli.main(changed) == 2
    assert "another recipe (eval_every 3 → 2)" in capsys.readouterr().err
    assert cli.main(["train", spec_file, "--trial", "0", "--iterations", "6", "--eval-every", "3", "-q", *TINY]) == 0
    resumed = study.get_trials(deepcopy=False)[-1]
    assert resumed.state.name == "COMPLETE" and resumed.user_attrs["resumed_from"] == 4
    assert [h["iteration"] for h in resumed.user_attrs["history"]] == [3, 6]
    w = _last_weights(url, "ndnet", resumed.number)
    assert all(torch.equal(uninterrupted[k], w[k]) for k in uninterrupted)
    assert final.results_by_source(url, "ndnet")[0].number == resumed.number
    # pareto shows the trial's proxy mIoU beside its trained mIoU
    capsys.readouterr()
    assert cli.main(["pareto", spec_file, "-q", *TINY]) == 0
    proxy = optuna.load_study(study_name="ndnet", storage=url).trials[0].user_attrs["miou"]
    best = resumed.user_attrs["best_miou"]
    assert (
        f"trial 0: proxy mIoU {100 * proxy:.2f}%, trained best {100 * best:.2f}% (iteration" in capsys.readouterr().out
    )


def test_train_refuses_a_trial_the_study_does_not_have_and_needs_a_budget(in_tmp, capsys):
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    assert cli.main(["run", spec_file, "--trials", "1", "-q", *TINY]) == 0
    assert cli.main(["train", spec_file, "--trial", "9", "--iterations", "2", "-q", *TINY]) == 2
    assert "--trial 9: study 'ndnet' has no such trial with knobs (trials: 0)" in capsys.readouterr().err
    assert cli.main(["train", spec_file, "--trial", "0", "-q", *TINY]) == 2
    assert "one of the arguments --iterations --epochs is required" in capsys.readouterr().err


def test_train_a_paper_variant(in_tmp, capsys):
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    args = ["train", spec_file, "--variant", "ndnet.ndnet29", "--iterations", "1", "-q", *TINY]
    assert cli.main(args) == 0
    assert "final training of variant ndnet.ndnet29 (ndnet, 1 iterations" in capsys.readouterr().out


def _camvid_tree(root: Path) -> None:
    """A CamVid tree in the SegNet layout with train, val and test splits of two 36×48 images each; the test
    labels are all road (3) with a strip of sky (0) and an unlabelled (11) corner."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (36, 48, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
            label = np.full((36, 48), 3, np.uint8)
            label[:6] = 0
            label[-4:, -4:] = 11
            Image.fromarray(label).save(root / f"{split}annot" / f"f{i}.png")


def test_eval_scores_any_split_the_data_set_has_with_per_class_iou(in_tmp, capsys, monkeypatch):
    from archsearch.training import scoring

    root = in_tmp / "camvid"
    _camvid_tree(root)
    sets = ["--set", "data.name=camvid", "--set", f"data.root={root}", "--set", "data.train_images=null"]
    sets += ["--set", "data.val_images=null"]
    spec_file = str(ROOT / "spaces" / "ndnet.yaml")
    assert cli.main(["run", spec_file, "--trials", "1", "-q", *TINY, *sets]) == 0
    capsys.readouterr()
    seen = {}
    real = scoring.evaluate

    def spy(model, dataset, *a, **kw):
        seen["scores"] = real(model, dataset, *a, **kw)
        seen["n"] = len(dataset)
        return seen["scores"]

    monkeypatch.setattr(scoring, "evaluate", spy)
    assert cli.main(["eval", spec_file, "--trial", "0", "--split", "test", "--device", "cpu", "-q", *TINY, *sets]) == 0
    out = capsys.readouterr().out
    scores = seen["scores"]
    assert seen["n"] == 2 and "on camvid/test (2 images" in out
    assert f"mIoU {100 * scores.miou:.2f}%" in out
    # one line per class; classes absent from labels and predictions have no IoU (—), and mIoU is the mean of the rest
    lines = {ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if ln.startswith("  ")}
    assert set(lines) == {"sky", "building", "pole", "road", "sidewalk", "tree", "sign/symbol", "fence", "car",
                          "pedestrian", "bicyclist"}  # fmt: skip
    present = [v for v in scores.iou_per_class if v is not None]
    assert abs(scores.miou - sum(present) / len(present)) < 1e-9
    assert cli.main(["eval", spec_file, "--trial", "0", "--split", "nosuch", "-q", *TINY, *sets]) == 2
    assert "has no nosuch/" in capsys.readouterr().err
