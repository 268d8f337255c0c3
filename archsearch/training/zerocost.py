"""Zero-cost scores: how good an architecture may be, judged at initialisation on one labelled batch.

Every score is higher-is-better and costs one or a few forward/backward passes (seconds on a CPU at proxy scale):

- ``naswot`` — Mellor et al. 2021, "Neural Architecture Search without Training": the log-determinant of the
  kernel ``K[i, j]`` = number of ReLU units on which images i and j have the same binary activation (on or off),
  summed over every ReLU call of the forward pass (``nn.ReLU`` and ``F.relu`` alike; every pixel of a feature
  map is a unit).
- ``jacob_cov`` — Mellor et al. 2020 (v1 of the same paper): the correlations ``C`` of the per-image Jacobians
  of the summed output with respect to the input; ``−Σ log(λ + k) + 1/(λ + k)`` over the eigenvalues λ of C,
  k = 1e-5 (uncorrelated Jacobians score highest).
- ``grad_norm`` — Σ over convolution and linear weights of the L2 norm of the training loss's gradient
  (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS").
- ``snip`` — Lee et al. 2019 as used by Abdelfattah et al. 2021: Σ |∂L/∂w · w| over those weights.
- ``synflow`` — Tanaka et al. 2020: every parameter replaced by its absolute value, in double precision with
  batch norm off (eval mode at initialisation: the identity, as Abdelfattah et al. 2021 do), an all-ones input;
  R = Σ output; Σ (∂R/∂w · w) over convolution and linear weights.
- ``zico`` — Li et al. 2023, "ZiCo": the batch split into mini-batches of two images; per convolution/linear
  layer, log(Σ_θ mean|g_θ| / std g_θ) over the parameters whose gradient varies; summed over layers.

``params`` and ``madds`` (the trial's parameter and multiply-add counts) are the two free baselines beside them
(:data:`FREE`). The model is scored on a copy, in train mode (batch statistics, as a freshly built network is
in the papers) except synflow, under a forked random state: the model and the caller's random streams are left
exactly as they were, and a score is a pure function of (architecture, initial weights, batch, seed).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from archsearch.builders.layers import logits_of
from archsearch.cost import num_threads
from archsearch.data.transforms import normalisation, to_device
from archsearch.spec import metrics
from archsearch.training.seeds import trial_seed
from archsearch.training.train import segmentation_loss

log = logging.getLogger(__name__)

#: The scores computed on a batch, in the order they are recorded (user attributes ``zc_<name>``).
SCORES = metrics.ZERO_COST_SCORES
#: Free baselines: the trial's own counts (user attributes ``params`` and ``madds``).
FREE = metrics.ZERO_COST_FREE
NAMES = metrics.ZERO_COST
attribute = metrics.zero_cost_attribute
#: Images of the scoring batch (fewer when the training split has fewer).
BATCH = 16


def _weights(model: nn.Module) -> Iterator[torch.Tensor]:
    """The weights the gradient scores sum over: those of convolutions and linear layers."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) and m.weight.requires_grad:
            yield m.weight


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return segmentation_loss(model(images), labels, ignore_index)


class _ReluPatterns(TorchFunctionMode):
    """Collects the binary activation pattern (output > 0) of every ReLU call, per image, as the kernel of
    agreements accumulates."""

    FUNCS = frozenset({F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})

    def __init__(self, n: int) -> None:
        super().__init__()
        self.kernel = torch.zeros(n, n, dtype=torch.float64)
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in self.FUNCS and isinstance(out, torch.Tensor) and out.shape[0] == self.kernel.shape[0]:
            codes = (out.detach() > 0).reshape(out.shape[0], -1).float()  # 0/1: float32 sums are exact here
            on = (codes @ codes.T).double()
            ones = codes.sum(dim=1).double()
            # agreements = on·on + off·off = c·cᵀ + (1 − c)·(1 − c)ᵀ = 2 c·cᵀ − |c_i| − |c_j| + units
            self.kernel += 2 * on - ones[:, None] - ones[None, :] + codes.shape[1]
            self.calls += 1
        return out


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """log |K| of the activation-pattern kernel (Mellor et al. 2021); ValueError when the network has no ReLU
    or K is singular."""
    patterns = _ReluPatterns(images.shape[0])
    with torch.no_grad(), patterns:
        model(images)
    if patterns.calls == 0:
        raise ValueError("no ReLU in the forward pass")
    sign, logdet = torch.linalg.slogdet(patterns.kernel)
    if sign <= 0:
        raise ValueError("the activation-pattern kernel is singular")
    return float(logdet)


def jacob_cov(model: nn.Module, images: torch.Tensor, k: float = 1e-5) -> float:
    """Mellor et al. 2020 (v1): −Σ log(λ + k) + 1/(λ + k) over the eigenvalues of the per-image Jacobians'
    correlation matrix."""
    x = images.clone().requires_grad_(True)
    out = logits_of(model(x))
    (grad,) = torch.autograd.grad(out.sum(), x)
    jacobians = grad.reshape(grad.shape[0], -1).double()
    corr = torch.corrcoef(jacobians)
    if not torch.isfinite(corr).all():
        raise ValueError("a Jacobian is constant (correlation undefined)")
    eig = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(eig + k) + 1.0 / (eig + k)).sum())


def _gradients(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights = list(_weights(model))
    grads = torch.autograd.grad(_loss(model, images, labels, ignore_index), weights, allow_unused=True)
    return [(w.detach(), g) for w, g in zip(weights, grads, strict=True) if g is not None]


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> float:
    """Σ over convolution/linear weights of ‖∂L/∂w‖₂ (L: the training loss)."""
    return _grad_norm(_gradients(model, images, labels, ignore_index))


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> float:
    """Σ |∂L/∂w · w| over convolution/linear weights."""
    return _snip(_gradients(model, images, labels, ignore_index))


def _grad_norm(grads: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return float(sum(float(g.norm()) for _, g in grads))


def _snip(grads: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return float(sum(float((g * w).abs().sum()) for w, g in grads))


def synflow(model: nn.Module, shape: Sequence[int]) -> float:
    """Tanaka et al. 2020: with |θ| for every parameter and buffer-free batch norm (eval mode at init), in double,
    R = Σ model(ones(shape)); Σ ∂R/∂w · w over convolution/linear weights. Works on the model it is given (pass a
    copy)."""
    model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    out = logits_of(model(torch.ones(*shape, dtype=torch.float64)))
    weights = list(_weights(model))
    grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
    total = sum(float((g * w.detach()).sum()) for w, g in zip(weights, grads, strict=True) if g is not None)
    if not math.isfinite(total):
        raise ValueError(f"synflow overflowed ({total})")
    return float(total)


def zico(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ignore_index: int, per_batch: int = 2) -> float:
    """Li et al. 2023: Σ over layers of log(Σ_θ mean|g_θ| / std g_θ), the statistics over mini-batches of
    ``per_batch`` images of the batch (two: batch norm in train mode needs more than one value per channel;
    parameters whose gradient does not vary are left out)."""
    chunks = [(images[i : i + per_batch], labels[i : i + per_batch]) for i in range(0, images.shape[0], per_batch)]
    chunks = [c for c in chunks if c[0].shape[0] == per_batch]
    n = len(chunks)
    if n < 2:
        raise ValueError(f"ZiCo needs at least {2 * per_batch} images")
    weights = list(_weights(model))
    s1 = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    s2 = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    sa = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    for x, y in chunks:
        grads = torch.autograd.grad(_loss(model, x, y, ignore_index), weights, allow_unused=True)
        for j, g in enumerate(grads):
            if g is not None:
                g = g.double()
                s1[j] += g
                s2[j] += g * g
                sa[j] += g.abs()
    total, layers = 0.0, 0
    for a, b, c in zip(s1, s2, sa, strict=True):
        mean = a / n
        std = ((b / n - mean * mean).clamp_min(0) * n / (n - 1)).sqrt()
        varies = std > 0
        if varies.any():
            total += math.log(float((c[varies] / n / std[varies]).sum()))
            layers += 1
    if layers == 0:
        raise ValueError("no gradient varies across the mini-batches")
    return total


def scoring_batch(dataset: Any, seed: int, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` distinct images of ``dataset`` (fewer if it has fewer) and their labels, drawn with ``seed``: images
    normalised as training sees them (uint8 items widened by :func:`~archsearch.data.transforms.to_device`),
    labels int64, on the CPU."""
    n = min(size, len(dataset))
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    pairs = [dataset[i] for i in sorted(picks)]
    info = dataset.info
    mean, std = normalisation(info)
    images, labels = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    return to_device(images, labels, torch.device("cpu"), mean, std)


@contextmanager
def _isolated(seed: int) -> Iterator[None]:
    """The caller's random streams untouched; inside, torch seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def compute(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    *,
    seed: int,
    names: Sequence[str] = SCORES,
    threads: int | None = None,
) -> dict[str, float | None]:
    """Each score of ``names`` (of :data:`SCORES`) on a copy of ``model`` (on the CPU, float32); a score that
    fails is None with a log line, never an exception."""
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise KeyError(f"{', '.join(unknown)}: not computed on a batch; allowed: {', '.join(SCORES)}")
    grads: list[list[tuple[torch.Tensor, torch.Tensor]]] = []  # one backward pass serves grad_norm and snip

    def gradients(m: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not grads:
            grads.append(_gradients(m, images, labels, ignore_index))
        return grads[0]

    fns: dict[str, Callable[[nn.Module], float]] = {
        "naswot": lambda m: naswot(m, images),
        "jacob_cov": lambda m: jacob_cov(m, images),
        "grad_norm": lambda m: _grad_norm(gradients(m)),
        "snip": lambda m: _snip(gradients(m)),
        "synflow": lambda m: synflow(m, (1, *images.shape[1:])),
        "zico": lambda m: zico(m, images, labels, ignore_index),
    }
    out: dict[str, float | None] = {}
    with num_threads(threads):
        for name in names:
            try:
                stream = "gradients" if name in ("grad_norm", "snip") else name  # one backward pass for both
                with _isolated(trial_seed(seed, "zero-cost", stream)):
                    m = copy.deepcopy(model).cpu().float().train()
                    value = fns[name](m)
                if not math.isfinite(value):
                    raise ValueError(f"not finite ({value})")
                out[name] = value
            except Exception as exc:  # noqa: BLE001 — a score this network cannot give is None; the trial goes on
                log.warning("zero-cost score %s failed: %s: %s", name, exc.__class__.__name__, exc)
                out[name] = None
    return out


def on_dataset(
    model: nn.Module, dataset: Any, seed: int, *, names: Sequence[str] = SCORES, threads: int | None = None
) -> dict[str, float | None]:
    """:func:`compute` on the :func:`scoring_batch` of ``dataset`` drawn with ``seed``."""
    images, labels = scoring_batch(dataset, trial_seed(seed, "zero-cost batch"))
    return compute(model, images, labels, int(dataset.info.ignore_index), seed=seed, names=names, threads=threads)
