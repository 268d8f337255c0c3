"""Confusion matrix → pixel accuracy, mean accuracy, mean IoU, per-class IoU and accuracy.

The three scores are the ones Wu et al. report (Sec. 4.1 of Wu, Shen & van den Hengel, "Real-time Semantic
Image Segmentation via Spatial Sparsity", arXiv:1712.00213, 2017) and the other papers reuse:

- pixel accuracy — correctly labelled pixels / all labelled pixels;
- mean accuracy — the mean of the class-wise pixel accuracies ``TP / (TP + FN)``;
- mean IoU — the mean of the class-wise intersection-over-union scores ``TP / (TP + FP + FN)``.

Pixels carrying the ignore label are excluded everywhere. A class absent from both the prediction and the
truth has no IoU (``None``) and is left out of mean IoU; a class that is only predicted has IoU 0 and counts.
Class-wise accuracy is defined only for classes present in the truth (``None`` otherwise), so mean accuracy
averages over those.

:func:`evaluate` runs a model over a data set (eval mode, no autograd), up-samples its logits bilinearly to
the label size — any output stride works — and scores the accumulated confusion matrix. Each batch holds the
device's shared turn (:func:`archsearch.cost.work_turn`), so no latency timing overlaps it. Images and labels
cross to the device as uint8 and are widened there; the matrix is accumulated on the device (:class:`Confusion`)
and read, with the check of the labels' range, once per evaluation: no host synchronisation per batch. Batches go in the
layout of the model's weights (channels-last after a proxy training in that layout: :mod:`.layout`), or the one
asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from archsearch.builders.layers import logits_of, upsample_to
from archsearch.cost import num_threads, tuned, work_turn
from archsearch.data import loader_workers
from archsearch.data.transforms import normalisation, to_device
from archsearch.training import layout
from archsearch.util import interrupts


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = truth, columns = prediction; ignored pixels are excluded.

    ``pred`` and ``target`` are integer tensors of one shape (e.g. ``(N, H, W)``); predictions are assumed to be
    in ``[0, C)``. A truth label outside ``[0, C)`` other than ``ignore_index`` is an error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    valid = target != ignore_index
    truth = target[valid].long()
    guess = pred[valid].long()
    if truth.numel() and (int(truth.min()) < 0 or int(truth.max()) >= num_classes):
        bad = int(truth.max()) if int(truth.max()) >= num_classes else int(truth.min())
        raise ValueError(f"label {bad} is outside [0, {num_classes}) and is not the ignore label {ignore_index}")
    counts = torch.bincount(truth * num_classes + guess, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


class Confusion:
    """A confusion matrix accumulated on the device: :meth:`add` queues work and never waits for it (no boolean
    indexing, no ``bincount`` — both read a size on the host); :meth:`matrix` reads the counts once and refuses
    a truth label outside ``[0, C)`` that is not the ignore label, as :func:`confusion_matrix` does."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str) -> None:
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        n = self.num_classes
        self.counts = torch.zeros(n * n + 1, dtype=torch.int64, device=device)  # the last bin: not counted
        self._high = torch.full((), -1, dtype=torch.int64, device=device)  # largest truth label ≥ C
        self._low = torch.zeros((), dtype=torch.int64, device=device)  # smallest negative truth label

    def add(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count predictions ``pred`` against truth ``target`` (integer tensors of one shape)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
        n = self.num_classes
        truth, guess = target.long().flatten(), pred.long().flatten()
        counted = (truth != self.ignore_index) & (truth >= 0) & (truth < n)
        index = torch.where(counted, truth * n + guess, n * n)
        self.counts.index_add_(0, index, torch.ones_like(index))
        bad = ~counted & (truth != self.ignore_index)
        self._high = torch.maximum(self._high, torch.where(bad, truth, -1).amax())
        self._low = torch.minimum(self._low, torch.where(bad, truth, 0).amin())

    def matrix(self) -> torch.Tensor:
        """The ``(C, C)`` int64 counts, rows = truth, columns = prediction (one read on the host)."""
        high, low = int(self._high), int(self._low)
        if high >= 0 or low < 0:
            bad = high if high >= 0 else low
            raise ValueError(
                f"label {bad} is outside [0, {self.num_classes}) and is not the ignore label {self.ignore_index}"
            )
        n = self.num_classes
        return self.counts[: n * n].reshape(n, n)


@dataclass(frozen=True)
class Scores:
    """Segmentation scores as fractions in ``[0, 1]`` (Wu et al. Sec. 4.1)."""

    miou: float
    pixel_acc: float
    mean_acc: float
    iou_per_class: list[float | None]  # None: class absent from both prediction and truth
    acc_per_class: list[float | None]  # None: class absent from the truth


def scores(conf: torch.Tensor) -> Scores:
    """Scores of a confusion matrix (rows = truth, columns = prediction)."""
    conf = conf.detach().to("cpu", torch.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {tuple(conf.shape)}")
    total = float(conf.sum())
    if total == 0:
        raise ValueError("the confusion matrix holds no labelled pixels")
    tp = conf.diagonal()
    truth = conf.sum(dim=1)  # TP + FN
    predicted = conf.sum(dim=0)  # TP + FP
    union = truth + predicted - tp  # TP + FP + FN
    iou: list[float | None] = [
        float(t / u) if u > 0 else None for t, u in zip(tp.tolist(), union.tolist(), strict=True)
    ]
    acc: list[float | None] = [
        float(t / n) if n > 0 else None for t, n in zip(tp.tolist(), truth.tolist(), strict=True)
    ]
    present_iou = [v for v in iou if v is not None]
    present_acc = [v for v in acc if v is not None]
    return Scores(
        miou=sum(present_iou) / len(present_iou),
        pixel_acc=float(tp.sum()) / total,
        mean_acc=sum(present_acc) / len(present_acc),
        iou_per_class=iou,
        acc_per_class=acc,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str,
    batch: int = 4,
    progress: bool = True,
    threads: int | None = None,
    memory_format: str | None = None,
) -> Scores:
    """Score ``model`` on every image of ``dataset``.

    The data set yields ``(image (3, H, W), label (H, W))`` — uint8 (normalised on the device with ``info.mean``
    and ``info.std``) or a float image and integer labels — and has ``info.num_classes`` and
    ``info.ignore_index``. The model runs in eval mode without autograd; its logits (a tensor, or a
    ``SegOutput``'s ``.logits``) are up-sampled bilinearly to the label size and arg-maxed. The model's
    train/eval mode is restored afterwards. ``threads`` (default: torch's current count) is set with
    ``torch.set_num_threads`` during the evaluation and restored after it. ``memory_format`` (``auto |
    channels_last | nchw``, :func:`archsearch.training.layout.memory_format`) puts the model's weights and the
    batches in that layout; default: the batches take the layout the model's weights are in.
    """
    if threads is not None:
        with num_threads(threads):
            return evaluate(model, dataset, device, batch, progress, memory_format=memory_format)
    device = torch.device(device)
    if memory_format is not None:
        fmt = layout.memory_format(memory_format, device)
        layout.to_layout(model, fmt)
    else:
        fmt = layout.layout_of(model)
    info = dataset.info
    num_classes = int(info.num_classes)
    ignore_index = int(info.ignore_index)
    mean, std = normalisation(info)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        num_workers=loader_workers(0, device),
        pin_memory=device.type == "cuda",
    )
    conf = Confusion(num_classes, ignore_index, device)
    was_training = model.training
    model.eval()
    try:
        batches = iter(loader)
        with tuned(device):
            for _ in tqdm(range(len(loader)), desc="evaluate", disable=not progress, leave=False):
                interrupts.check()  # a stop whose exception a finaliser swallowed
                with work_turn(device):  # one batch at a time: another worker's latency timing never overlaps it
                    images, labels = next(batches)
                    images, labels = to_device(images, labels, device, mean, std)
                    images = layout.to_layout(images, fmt)
                    logits = logits_of(model(images))
                    if logits.shape[1] != num_classes:
                        raise ValueError(
                            f"the model predicts {logits.shape[1]} classes, the data set has {num_classes}"
                        )
                    pred = upsample_to(logits.float(), labels.shape[-2:]).argmax(dim=1)
                    conf.add(pred, labels)
    finally:
        model.train(was_training)
    return scores(conf.matrix())
