"""The proxy training loop: one loop trains every builder for a short, fixed budget.

- SGD with momentum ``proxy.momentum`` and weight decay ``proxy.weight_decay`` (not applied to batch-norm
  and bias parameters);
- the "poly" learning-rate policy ``lr = base · (1 − it / iterations) ** power`` (:func:`poly_lr`);
- each iteration draws ``proxy.batch`` images at random with replacement (a seeded ``RandomSampler``; at least
  two loader processes on CUDA), moves them to the device as uint8, normalises and augments them there
  (``archsearch.data.transforms``: random scale, crop, flip);
- loss: cross-entropy (ignore label excluded) on the main logits up-sampled bilinearly to the label size, plus
  ``w · CE`` for each auxiliary ``(w, logits)`` of a :class:`~archsearch.builders.layers.SegOutput` (cascade
  label guidance, deep supervision) plus its ``penalty`` (e.g. the sparsity term); a ``SegOutput`` with
  ``labels_at_logits`` (ICNet) scores each term against the labels down-sampled (nearest) to its logits instead;
- mixed precision on CUDA when ``proxy.amp`` (:func:`amp_dtype`): bfloat16 autocast where the GPU supports it,
  without loss scaling; else float16 with one ``GradScaler`` for the whole training (:func:`grad_scaler`: the
  phases of progressive pruning share it, so none restarts by skipping steps at its highest learning rate);
  float32 on the CPU; cuDNN's auto-tuner on CUDA (the shapes are fixed);
- a NaN or infinite loss stops training with :class:`TrainingDiverged` naming its iteration; the loss is read
  on the host every iteration on the CPU and every :data:`LOSS_CHECK_EVERY` iterations on CUDA, where each
  read is a synchronisation;
- weights and batches in the layout of ``proxy.memory_format`` (:mod:`archsearch.training.layout`: channels-last
  by default on the CPU and CUDA);
- with ``proxy.ema_decay`` > 0, an exponential moving average of the weights and batch-norm buffers
  (:mod:`archsearch.training.averaging`) is updated after every step, and :func:`fit` leaves the averaged weights
  in the model;
- each iteration (batch fetch, forward, backward, step) holds the device's shared turn
  (:func:`archsearch.cost.work_turn`), so another worker's latency timing never overlaps it.

Everything random is seeded from ``seed``; batch sampling and augmentation from ``data_seed`` instead when one is
given (common random numbers: every architecture of a study drawing the same batches). On the CPU two fits with the
same seeds from the same initial weights give identical weights. The CPU's and the GPU's generators are both carried
between the parts of a :class:`Trainer`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from archsearch.builders.layers import SegOutput, upsample_to
from archsearch.cost import num_threads, tuned, work_turn
from archsearch.data import loader_workers
from archsearch.data.transforms import augment, normalisation, to_device
from archsearch.spec import ProxySpec
from archsearch.training import averaging, layout
from archsearch.util import interrupts


@dataclass(frozen=True)
class FitResult:
    """What a fit did: iterations run, wall time, throughput and the loss of every iteration."""

    iterations: int
    seconds: float
    images_per_s: float
    final_loss: float  # the loss of the last iteration (NaN when no iteration ran)
    losses: list[float]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration."""


#: Iterations between two reads of the loss on the host during training on CUDA (each read waits for the GPU).
LOSS_CHECK_EVERY = 25


def loss_check_every(device: torch.device) -> int:
    """How often the loss is read (and checked) on the host: every iteration on the CPU, where a read costs
    nothing, and every :data:`LOSS_CHECK_EVERY` iterations on an asynchronous device."""
    return 1 if device.type == "cpu" else LOSS_CHECK_EVERY


def amp_dtype(proxy: ProxySpec, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training: None (float32) on the CPU or without ``proxy.amp``; on CUDA bfloat16 where
    the GPU supports it (float32's range: no loss scaling, no skipped steps), else float16."""
    if not proxy.amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(proxy: ProxySpec, device: torch.device) -> torch.amp.GradScaler:
    """A ``GradScaler`` enabled only for float16 training (:func:`amp_dtype`). Make one per training and pass it
    to each of its fits: a fresh scaler starts at a scale that overflows, skipping its first steps."""
    enabled = amp_dtype(proxy, device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=enabled)


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's global CPU generator state and, on CUDA, the state of ``device``'s generator (dropout on the GPU
    draws from it)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def poly_lr(base_lr: float, iteration: int, iterations: int, power: float) -> float:
    """The "poly" policy: ``base_lr · (1 − iteration / iterations) ** power`` (iteration counted from 0)."""
    return base_lr * (1.0 - iteration / iterations) ** power


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on convolution/linear weights only, none on batch-norm weights and biases (1-D tensors)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def labels_to(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``(N, H, W)`` labels down-sampled to ``size`` by nearest neighbour (ids stay ids, 255 stays ignored)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(labels.dtype)


def _cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, at_logits: bool = False
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels of ``logits`` up-sampled to the label size (``at_logits``: against
    the labels down-sampled to the logits); 0 if none is labelled.

    (``F.cross_entropy`` with ``reduction="mean"`` returns NaN for a batch whose pixels are all ignored, which
    would read as divergence.)
    """
    if at_logits:
        labels = labels_to(labels, logits.shape[-2:])
    logits = upsample_to(logits, labels.shape[-2:])
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    labelled = (labels != ignore_index).sum().clamp_min(1)
    return total / labelled


def segmentation_loss(output: torch.Tensor | SegOutput, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Main cross-entropy + Σ ``w · CE(aux)`` + ``penalty`` for a ``SegOutput``; plain CE for a tensor."""
    if not isinstance(output, SegOutput):
        return _cross_entropy(output, labels, ignore_index)
    at = output.labels_at_logits
    loss = _cross_entropy(output.logits, labels, ignore_index, at)
    for weight, aux in output.aux:
        loss = loss + weight * _cross_entropy(aux, labels, ignore_index, at)
    if output.penalty is not None:
        loss = loss + output.penalty.float()
    return loss


def fit(
    model: nn.Module,
    dataset: Any,
    proxy: ProxySpec,
    device: torch.device | str,
    *,
    seed: int = 0,
    data_seed: int | None = None,
    iterations: int | None = None,
    lr_scale: float = 1.0,
    schedule: tuple[int, int] | None = None,
    progress: bool = True,
    desc: str = "train",
    threads: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> FitResult:
    """Train ``model`` in place on ``dataset`` for ``iterations`` (default ``proxy.iterations``) iterations.

    ``lr_scale`` multiplies ``proxy.lr``. ``schedule = (start, total)`` makes this fit the iterations
    ``start … start + iterations − 1`` of one poly schedule over ``total`` (the phases of progressive pruning
    continue one learning-rate schedule instead of restarting it); default ``(0, iterations)``. The data set yields
    ``(image (3, H, W) float32, label (H, W) int64)`` and has ``info.ignore_index``. The model is moved to
    ``device`` and left in train mode. ``threads`` (default: torch's current count) is set with
    ``torch.set_num_threads`` for the fit and restored after it, so that several workers on one machine do not
    oversubscribe its cores (``target.threads`` of the spec). ``scaler`` (:func:`grad_scaler`; default: a new
    one) carries float16 loss scaling over from an earlier fit of the same training. ``data_seed`` (default:
    ``seed``) seeds batch sampling and augmentation. With ``proxy.ema_decay`` > 0 the model is left holding the
    averaged weights.
    """
    with num_threads(threads):
        iterations = proxy.iterations if iterations is None else int(iterations)
        if iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {iterations}")
        if iterations == 0:
            return FitResult(iterations=0, seconds=0.0, images_per_s=0.0, final_loss=math.nan, losses=[])
        trainer = Trainer(
            model,
            dataset,
            proxy,
            device,
            seed=seed,
            data_seed=data_seed,
            iterations=iterations,
            lr_scale=lr_scale,
            schedule=schedule,
            scaler=scaler,
        )
        result = trainer.advance(iterations, progress=progress, desc=desc)
        if trainer.ema is not None:
            model.load_state_dict(trainer.ema.module.state_dict())
        return result


class Trainer:
    """One fit that can be run in parts: ``Trainer(model, ..., iterations=N)`` then ``advance(n1)``,
    ``advance(n2)``, … (n1 + n2 + … ≤ N) trains exactly as one :func:`fit` of N iterations with the same seed —
    the same batches, augmentations, learning rates and optimizer (momentum) state, and torch's global random
    state carried from one part to the next, so whatever runs between the parts (an evaluation) changes nothing;
    on the CPU the weights after the last part equal those of the single fit. Multi-fidelity search trains a
    trial rung by rung with it (:mod:`archsearch.fidelity`). ``iterations`` and ``schedule`` mean what they mean
    for :func:`fit` (``schedule`` default ``(0, iterations)``). :attr:`scored_model` is the network to evaluate:
    the moving average of the weights when ``proxy.ema_decay`` > 0 (:attr:`ema`), else the model itself."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        proxy: ProxySpec,
        device: torch.device | str,
        *,
        seed: int = 0,
        data_seed: int | None = None,
        iterations: int | None = None,
        lr_scale: float = 1.0,
        schedule: tuple[int, int] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.iterations = proxy.iterations if iterations is None else int(iterations)
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        start_it, total_its = (0, self.iterations) if schedule is None else (int(schedule[0]), int(schedule[1]))
        if start_it < 0 or start_it + self.iterations > total_its:
            raise ValueError(
                f"schedule {schedule}: iterations {start_it}…{start_it + self.iterations - 1} are not "
                f"within 0…{total_its - 1}"
            )
        self.model, self.dataset, self.proxy = model, dataset, proxy
        self.done = 0  # iterations run so far
        self._start_it, self._total_its = start_it, total_its
        self._base_lr = proxy.lr * lr_scale
        self._ignore_index = int(dataset.info.ignore_index)

        torch.manual_seed(seed)
        data = seed if data_seed is None else int(data_seed)
        sample_gen = torch.Generator().manual_seed(data)
        self._augment_gen = torch.Generator().manual_seed(data + 1)
        worker_gen = torch.Generator().manual_seed(data + 2)  # the DataLoader's worker seeds
        sampler = RandomSampler(
            dataset, replacement=True, num_samples=self.iterations * proxy.batch, generator=sample_gen
        )
        self._loader = DataLoader(
            dataset,
            batch_size=proxy.batch,
            sampler=sampler,
            num_workers=loader_workers(proxy.workers, self.device),
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            generator=worker_gen,
        )
        self._batches: Any = None  # the loader's iterator, made at the first part
        self._rng = rng_state(self.device)  # torch's global CPU and GPU states, carried between the parts

        self._format = layout.memory_format(proxy.memory_format, self.device)
        layout.to_layout(model.to(self.device), self._format)
        model.train()
        self.ema = averaging.ema(model, float(proxy.ema_decay)) if proxy.ema_decay > 0 else None
        self._optimizer = torch.optim.SGD(
            _param_groups(model, proxy.weight_decay),
            lr=self._base_lr,
            momentum=proxy.momentum,
            weight_decay=proxy.weight_decay,
        )
        self._amp = amp_dtype(proxy, self.device)
        self._scaler = grad_scaler(proxy, self.device) if scaler is None else scaler
        self._check_every = loss_check_every(self.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the rest of this fit, as plain tensors and numbers (``torch.save`` with
        ``weights_only=True`` reads it back): the iterations done, the model, the optimizer (momentum), the loss
        scaler, the moving average of the weights (``proxy.ema_decay``), the augmentation generator and torch's
        random states. The data order is not stored: it is the seed's, and :meth:`load_state_dict` draws the
        batches already seen again (without training on them)."""
        return {
            "done": self.done,
            "model": self.model.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "scaler": self._scaler.state_dict(),
            "augment_rng": self._augment_gen.get_state(),
            "rng": self._rng,  # the CPU's and (on CUDA) the GPU's generator
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a fit from :meth:`state_dict` of a Trainer made with the same arguments (model, data set,
        proxy, seed, iterations, schedule): the next :meth:`advance` trains exactly as the interrupted fit would
        have — on the CPU the final weights equal those of an uninterrupted fit."""
        done = int(state["done"])
        if self.done != 0 or not 0 <= done <= self.iterations:
            raise ValueError(f"cannot resume at iteration {done}: this fit has {self.iterations}, {self.done} run")
        self.model.load_state_dict(state["model"])
        layout.to_layout(self.model.to(self.device), self._format)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._scaler.load_state_dict(state["scaler"])
        if done:
            self._batches = iter(self._loader)
            for _ in range(done):  # the sampler draws the same indices again; the images are not trained on
                next(self._batches)
        self._augment_gen.set_state(state["augment_rng"])
        self._rng = state["rng"]
        self.done = done

    @property
    def scored_model(self) -> nn.Module:
        """The network to evaluate: the moving average (in eval use; not trained) or the model itself."""
        return self.ema.module if self.ema is not None else self.model

    def advance(
        self, iterations: int, *, progress: bool = False, desc: str = "train", threads: int | None = None
    ) -> FitResult:
        """Run the next ``iterations`` iterations (with ``threads`` torch threads, as :func:`fit`); the model is
        left in train mode on the device."""
        with num_threads(threads), tuned(self.device):
            return self._advance(int(iterations), progress, desc)

    def _advance(self, iterations: int, progress: bool, desc: str) -> FitResult:

        if iterations < 0 or self.done + iterations > self.iterations:
            raise ValueError(
                f"{iterations} more iterations after {self.done}: beyond the {self.iterations} of this fit"
            )
        if iterations == 0:
            return FitResult(iterations=0, seconds=0.0, images_per_s=0.0, final_loss=math.nan, losses=[])
        proxy, device, model, optimizer = self.proxy, self.device, self.model, self._optimizer
        set_rng_state(device, self._rng)
        layout.to_layout(model.to(device), self._format)
        model.train()
        losses: list[float] = []
        pending: list[torch.Tensor] = []  # losses not yet read on the host
        info = self.dataset.info
        mean, std = normalisation(info)
        images_seen = 0
        start = time.perf_counter()
        bar = tqdm(total=iterations, desc=desc, disable=not progress, leave=False)
        try:
            if self._batches is None:
                self._batches = iter(self._loader)
            for step in range(iterations):
                interrupts.check()  # a stop whose exception a finaliser swallowed
                it = self.done
                with work_turn(device):  # one iteration at a time, so a waiting timer gets in quickly
                    images, labels = next(self._batches)
                    lr = poly_lr(self._base_lr, self._start_it + it, self._total_its, proxy.poly_power)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    images, labels = to_device(images, labels, device, mean, std)
                    images, labels = augment(
                        images,
                        labels,
                        crop=proxy.crop,
                        scale_range=proxy.scale_range,
                        flip=proxy.flip,
                        generator=self._augment_gen,
                    )
                    images = layout.to_layout(images, self._format)
                    with torch.autocast(device.type, dtype=self._amp or torch.float32, enabled=self._amp is not None):
                        loss = segmentation_loss(model(images), labels, self._ignore_index)
                    pending.append(loss.detach())
                    if len(pending) >= self._check_every or step == iterations - 1:
                        self._read(pending, losses, it, desc)  # before the step: a NaN never reaches the weights
                    optimizer.zero_grad(set_to_none=True)
                    self._scaler.scale(loss).backward()
                    self._scaler.step(optimizer)
                    self._scaler.update()
                    if self.ema is not None:
                        self.ema.update_parameters(model)
                    self.done += 1
                    images_seen += images.shape[0]
                    bar.update(1)
                    if progress and losses:
                        bar.set_postfix(
                            loss=f"{losses[-1]:.4f}",
                            img_s=f"{images_seen / (time.perf_counter() - start):.1f}",
                            refresh=False,
                        )
        finally:
            bar.close()
            self._rng = rng_state(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return FitResult(
            iterations=len(losses),
            seconds=seconds,
            images_per_s=images_seen / seconds if seconds > 0 else 0.0,
            final_loss=losses[-1],
            losses=losses,
        )

    def _read(self, pending: list[torch.Tensor], losses: list[float], it: int, desc: str) -> None:
        """Read the pending losses on the host (one synchronisation), the last of them at iteration ``it``;
        :class:`TrainingDiverged` naming the first iteration whose loss is not finite."""
        values = torch.stack(pending).float().tolist()
        first = it - len(values) + 1
        pending.clear()
        for k, value in enumerate(values):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{desc}: loss is {value} at iteration {first + k} of {self.iterations}")
            losses.append(value)
