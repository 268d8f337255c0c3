"""Issue 10, item 6: scores at the labels' own resolution, and several seeds per trial with their spread."""

import statistics
from pathlib import Path

import optuna
import pytest
import torch

from archsearch import cli, data
from archsearch.data.transforms import to_device
from archsearch.spec import DataSpec
from archsearch.training import scoring
from archsearch.training.seeds import seed_summary, training_seeds

ROOT = Path(__file__).resolve().parents[1]


def test_scoring_set_keeps_labels_at_their_own_resolution(tmp_path) -> None:
    spec = DataSpec(name="synthetic", size=(64, 128), val_images=2, cache_dir=str(tmp_path))
    scoring = data.load_scoring(spec, "val", 0.25)
    image, label = scoring[1]
    assert image.shape == (3, 16, 32) and label.shape == (64, 128)
    native = data.load(spec, "val", 1.0)
    assert torch.equal(label, native[1][1])  # the very labels of the native resolution
    assert torch.equal(image, data.load(spec, "val", 0.25)[1][0])  # the proxy's images
    assert isinstance(data.load_scoring(spec, "val", 1.0), data.SegDataset)  # nothing to separate at scale 1


def test_evaluation_scores_upsampled_logits_against_native_labels(tmp_path) -> None:
    """A model that predicts the labels of the proxy resolution exactly is scored against the native labels:
    it loses the detail the small labels lack (thin poles, far signs), so its mIoU is below 1."""
    spec = DataSpec(name="synthetic", size=(64, 128), val_images=2, cache_dir=str(tmp_path))
    small = data.load(spec, "val", 0.25)
    labels = torch.stack([small[i][1] for i in range(len(small))]).long()
    # what the model is shown: the uint8 images normalised on the device
    shown = [
        to_device(small[i][0][None], small[i][1][None], torch.device("cpu"), small.info.mean, small.info.std)[0][0]
        for i in range(len(small))
    ]

    class Oracle(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = torch.full((images.shape[0], 19, 16, 32), -10.0)
            for b in range(images.shape[0]):  # the proxy-resolution labels of the image it is shown
                own = labels[next(i for i in range(len(small)) if torch.equal(images[b], shown[i]))]
                out[b].scatter_(0, own.clamp(max=18)[None], 10.0)
            return out

    at_proxy = scoring.evaluate(Oracle(), small, "cpu", batch=2, progress=False)
    at_labels = scoring.evaluate(Oracle(), data.load_scoring(spec, "val", 0.25), "cpu", batch=2, progress=False)
    assert at_proxy.miou == pytest.approx(1.0)  # shrunk labels flatter the proxy
    assert at_labels.miou < 0.95


def test_training_seeds_and_their_summary() -> None:
    assert training_seeds(7, 1) == [7]
    seeds = training_seeds(7, 3)
    assert seeds[0] == 7 and len(set(seeds)) == 3 and training_seeds(7, 3) == seeds
    runs = [scoring.Scores(m, 0.9, 0.8, [m, None], [0.5, None]) for m in (0.40, 0.44, 0.48)]
    s = seed_summary(runs)
    assert s["miou"] == pytest.approx(0.44) and s["miou_seeds"] == pytest.approx([0.40, 0.44, 0.48])
    assert s["miou_std"] == pytest.approx(0.04)
    assert s["iou_per_class"] == [pytest.approx(0.44), None]
    assert seed_summary(runs[:1])["miou_std"] is None


@pytest.mark.slow
def test_a_trial_trains_several_seeds(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHSEARCH_LOCK_DIR", str(tmp_path))
    url = f"sqlite:///{tmp_path / 'S.db'}"
    args = [
        "run",
        str(ROOT / "spaces" / "ndnet.yaml"),
        "--storage",
        url,
        "--trials",
        "1",
        "-q",
        "--set",
        "data.name=synthetic",
        "--set",
        "data.train_images=2",
        "--set",
        "data.val_images=1",
        "--set",
        "data.size=[64,128]",
        "--set",
        "proxy.iterations=2",
        "--set",
        "proxy.batch=1",
        "--set",
        "proxy.scale=0.5",
        "--set",
        "target.input=[1,3,64,128]",
        "--set",
        "target.repeats=1",
        "--set",
        "target.warmup=0",
        "--set",
        "proxy.seeds=2",
    ]
    assert cli.main(args) == 0
    (t,) = optuna.load_study(study_name="ndnet", storage=url).get_trials()
    a = t.user_attrs
    assert len(a["seeds"]) == 2 and a["seeds"][0] == a["seed"] and len(set(a["seeds"])) == 2
    assert len(a["miou_seeds"]) == 2 and a["miou_seeds"][0] != a["miou_seeds"][1]  # different weights
    assert a["miou"] == pytest.approx(statistics.fmean(a["miou_seeds"])) and t.values[0] == a["miou"]
    assert a["miou_std"] == pytest.approx(statistics.stdev(a["miou_seeds"]))
