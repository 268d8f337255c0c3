"""Confusion matrix and scores (Wu et al. Sec. 4.1) against hand-computed cases; evaluate at any output stride."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.builders.layers import SegOutput
from archsearch.training.scoring import Scores, confusion_matrix, evaluate, scores

# Two 2×3 images, 4 classes. Class 2 is only predicted (IoU 0, counts in mIoU); class 3 appears nowhere
# (excluded). The last pixel of image 1 is ignored (255) and predicted as 0 — it must not be counted.
TARGET = torch.tensor(
    [
        [[0, 0, 1], [1, 1, 255]],
        [[0, 0, 0], [1, 0, 1]],
    ]
)
PRED = torch.tensor(
    [
        [[0, 1, 1], [1, 2, 0]],
        [[0, 0, 2], [1, 0, 1]],
    ]
)
# (truth, prediction) pairs counted by hand over the 11 labelled pixels:
# image 1: (0,0) (0,1) (1,1) (1,1) (1,2); image 2: (0,0) (0,0) (0,2) (1,1) (0,0) (1,1).
CONF = torch.tensor(
    [
        [4, 1, 1, 0],
        [0, 4, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
)


def test_confusion_matrix_by_hand() -> None:
    conf = confusion_matrix(PRED, TARGET, num_classes=4)
    assert conf.dtype == torch.int64
    assert torch.equal(conf, CONF)
    assert int(conf.sum()) == 11  # the ignored pixel is left out


def test_confusion_matrix_other_ignore_label_and_bad_label() -> None:
    target = TARGET.clone()
    target[target == 255] = 3  # with ignore_index=3, class 3 pixels are ignored instead
    assert torch.equal(confusion_matrix(PRED, target, 4, ignore_index=3), CONF)
    with pytest.raises(ValueError, match="label 255"):
        confusion_matrix(PRED, TARGET, num_classes=4, ignore_index=-1)


def test_scores_by_hand() -> None:
    s = scores(CONF)
    # pixel accuracy: 8 correct of 11 labelled
    assert s.pixel_acc == pytest.approx(8 / 11)
    # class-wise accuracy TP/(TP+FN): class 0: 4/6, class 1: 4/5; classes 2 and 3 are absent from the truth
    assert s.acc_per_class == pytest.approx([4 / 6, 4 / 5, None, None])
    assert s.mean_acc == pytest.approx((4 / 6 + 4 / 5) / 2)
    # IoU TP/(TP+FP+FN): class 0: 4/(4+0+2), class 1: 4/(4+1+1), class 2: 0/(0+2+0), class 3: absent → None
    assert s.iou_per_class[:3] == pytest.approx([4 / 6, 4 / 6, 0.0])
    assert s.iou_per_class[3] is None
    assert s.miou == pytest.approx((4 / 6 + 4 / 6 + 0.0) / 3)  # = 4/9


def test_perfect_prediction_scores_one() -> None:
    s = scores(confusion_matrix(TARGET.clamp(max=1), TARGET, num_classes=4))
    assert (s.miou, s.pixel_acc, s.mean_acc) == (1.0, 1.0, 1.0)
    assert s.iou_per_class == [1.0, 1.0, None, None]


def test_scores_reject_empty_matrix() -> None:
    with pytest.raises(ValueError, match="no labelled pixels"):
        scores(torch.zeros(3, 3, dtype=torch.int64))


class HalvesDataset:
    """8×16 images: left half class 0, right half class 1 (the class is encoded as the image's channels)."""

    info = SimpleNamespace(num_classes=2, ignore_index=255)

    def __len__(self) -> int:
        return 5

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = torch.zeros(8, 16, dtype=torch.int64)
        label[:, 8:] = 1
        image = F.one_hot(label, 3).permute(2, 0, 1).float()  # channel c is 1 where the class is c
        label[0, 0] = 255  # one ignored pixel per image
        return image, label


class QuarterResolution(nn.Module):
    """Logits at 1/4 resolution: 4×4 average pooling of the first two image channels (the class one-hot)."""

    def __init__(self, seg_output: bool = False, constant: int | None = None) -> None:
        super().__init__()
        self.seg_output = seg_output
        self.constant = constant
        self.bn = nn.BatchNorm2d(2)  # a module whose eval/train mode matters

    def forward(self, images: torch.Tensor) -> torch.Tensor | SegOutput:
        logits = F.avg_pool2d(images[:, :2], 4)
        if self.constant is not None:
            logits = torch.zeros_like(logits)
            logits[:, self.constant] = 1.0
        return SegOutput(logits) if self.seg_output else logits


@pytest.mark.slow
def test_evaluate_quarter_resolution_logits_perfect() -> None:
    model = QuarterResolution()
    assert model.training
    s = evaluate(model, HalvesDataset(), "cpu", batch=2, progress=False)
    # bilinear up-sampling of 2 columns per class at 1/4 resolution flips exactly at the half boundary
    assert isinstance(s, Scores)
    assert (s.miou, s.pixel_acc, s.mean_acc) == (1.0, 1.0, 1.0)
    assert model.training  # mode restored


def test_evaluate_constant_prediction_by_hand() -> None:
    """Always class 0, SegOutput tolerated: per image 63 class-0 pixels (one ignored) and 64 class-1 pixels."""
    s = evaluate(QuarterResolution(seg_output=True, constant=0), HalvesDataset(), "cpu", batch=4, progress=False)
    assert s.pixel_acc == pytest.approx(63 / 127)
    assert s.acc_per_class == pytest.approx([1.0, 0.0])
    assert s.mean_acc == pytest.approx(0.5)
    assert s.iou_per_class == pytest.approx([63 / 127, 0.0])
    assert s.miou == pytest.approx(63 / 127 / 2)


def test_evaluate_rejects_wrong_class_count() -> None:
    ds = HalvesDataset()
    ds.info = SimpleNamespace(num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match="predicts 2 classes"):
        evaluate(QuarterResolution(), ds, "cpu", progress=False)
