"""Batch norm folded into the convolution before it, as a deployment toolchain does before timing.

:func:`fold_bn` finds the (convolution, batch norm) pairs by running the model once on a small probe, folds them
(``torch.nn.utils.fusion.fuse_conv_bn_eval``) and checks the folded copy against the original in float64, where
TF32 convolutions (cuDNN's default on Ampere and later GPUs) and other reduced-precision kernels round nothing.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from archsearch.cost.forward import TimedForward
from archsearch.util.errors import ArchsearchError


class FoldingError(ArchsearchError):
    """Folding batch norm changed a model's output: a one-line error, the model is not timed."""


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _UseCounter(TorchFunctionMode):
    """Counts, per tensor id, the torch calls that take the tensor and return a tensor (so metadata reads such
    as ``x.dim()`` or ``x.shape`` do not count as uses)."""

    def __init__(self, watched: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.uses: collections.Counter[int] = collections.Counter()

    def __torch_function__(
        self,
        func: Callable[..., object],
        types: Sequence[type],
        args: Sequence[object] = (),
        kwargs: dict[str, object] | None = None,
    ) -> object:
        result = func(*args, **(kwargs or {}))
        if any(isinstance(v, torch.Tensor) for v in tree_flatten(result)[0]):
            for v in tree_flatten((args, kwargs or {}))[0]:
                if isinstance(v, torch.Tensor) and id(v) in self.watched:
                    self.uses[id(v)] += 1
        return result


def _conv_bn_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batch norm) module names where, in one eval forward on ``probe``, the batch norm's input is the
    convolution's output and nothing else uses that output, and each module runs exactly once."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: collections.Counter[str] = collections.Counter()
    produced: dict[int, torch.Tensor] = {}  # kept alive so ids are not reused during the pass
    producer: dict[int, str] = {}
    fed: dict[str, int] = {}  # bn name → id of its input

    def conv_hook(m: nn.Module, _i: object, out: torch.Tensor) -> None:
        calls[names[id(m)]] += 1
        if isinstance(out, torch.Tensor):
            produced[id(out)] = out
            producer[id(out)] = names[id(m)]

    def bn_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        calls[names[id(m)]] += 1
        fed[names[id(m)]] = id(inputs[0])

    handles = []
    for m in model.modules():
        if isinstance(m, _CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, _BNS):
            handles.append(m.register_forward_pre_hook(bn_hook))
    counter = _UseCounter(produced)
    try:
        with torch.no_grad(), counter:
            model(probe)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for bn, tid in fed.items():
        conv = producer.get(tid)
        if conv is not None and calls[conv] == 1 and calls[bn] == 1 and counter.uses[tid] == 1:
            pairs.append((conv, bn))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def probe_size(input_size: Sequence[int]) -> tuple[int, int, int, int]:
    """A small input of the same aspect for :func:`fold_bn`'s probe: ``input_size`` itself up to 256×512, else
    an eighth of each side rounded down to a multiple of 32 (1024×2048 → 128×256), batch 1."""
    _, c, h, w = (int(v) for v in input_size)
    if h * w <= 256 * 512:
        return (1, c, h, w)
    return (1, c, max(32, h // 8 // 32 * 32), max(32, w // 8 // 32 * 32))


def fold_bn(model: nn.Module, probe_size: Sequence[int] = (1, 3, 64, 128), *, atol: float = 1e-4) -> nn.Module:
    """An eval-mode deep copy of ``model`` with every batch norm that directly follows a convolution folded into
    it (``torch.nn.utils.fusion.fuse_conv_bn_eval``; the batch norm becomes ``nn.Identity``), as a deployment
    toolchain does and SPSSNet's Sec. 5.3 times. The pairs are found by running ``model`` once on a ``probe_size``
    input (any builder, data-dependent forwards included): a batch norm is folded only when its input is a
    convolution's output that nothing else uses, and both run once. ``model`` itself is left unchanged.

    The copy's output on the probe is checked against the original's within ``atol`` × the output's largest
    magnitude (at least ``atol``), both run in float64 on the model's device (:func:`check_folded`): a
    disagreement is a :class:`FoldingError` (one line)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    folded = copy.deepcopy(model).eval()
    probe = torch.randn(*probe_size, generator=torch.Generator().manual_seed(0)).to(device)
    for conv_name, bn_name in _conv_bn_pairs(folded, probe):
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        assert isinstance(conv, _CONVS) and isinstance(bn, _BNS)  # as _conv_bn_pairs found them
        transpose = isinstance(conv, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
        _set_submodule(folded, conv_name, fuse_conv_bn_eval(conv, bn, transpose=transpose))
        _set_submodule(folded, bn_name, nn.Identity())
    check_folded(model, folded, probe, atol=atol)
    return folded


def check_folded(model: nn.Module, folded: nn.Module, probe: torch.Tensor, *, atol: float = 1e-4) -> float:
    """The largest difference of ``folded``'s timed output from ``model``'s on ``probe``, both computed in float64
    (copies; the models stay as they are): folding changes how the weights round, and in float32 on a GPU the
    convolutions run in TF32 (10-bit mantissa), where the folded and unfolded weights round differently and
    errors of ~1e-3 build up with depth — no folding error, only rounding. :class:`FoldingError` when it exceeds
    ``atol`` × the output's largest magnitude (at least ``atol``)."""
    x = probe.double()
    with torch.no_grad():
        ref = TimedForward(copy.deepcopy(model).double()).eval()(x)
        out = TimedForward(copy.deepcopy(folded).double()).eval()(x)
    diff = float((ref - out).abs().max())
    bound = atol * max(1.0, float(ref.abs().max()))
    if not diff <= bound:
        raise FoldingError(f"folding batch norm changed the output by {diff:.3g} (> {bound:.3g}); not timed")
    return diff
