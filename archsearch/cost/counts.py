"""Counting a network's size and work: parameters, multiply-adds as the papers count them, and FLOPs.

- :func:`count_params` — trainable and non-trainable parameters (``numel``) of the module.
- :func:`count_madds` — multiply-adds at an input size as the papers count them: multiply-accumulates of
  convolutions and linear layers only, counted as the ops execute in eval mode (so data-dependent paths, such as
  fast inference that computes only some regions, count what runs); a per-paper :data:`CONVENTIONS` entry
  leaves out layers a paper evidently did not count.
- :func:`count_flops` — fvcore's wider total (batch norm, up-sampling and pooling too), kept as ``flops``.

Both counts run one forward pass on the device the model is on (the target device of a trial).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis
from torch.utils.flop_counter import FlopCounterMode

from archsearch.cost.forward import eval_mode
from archsearch.util.registry import Registry


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (every tensor in ``model.parameters()``)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class Convention:
    """How one paper counts multiply-adds: which marked modules (their ``cost_role``) it leaves out."""

    name: str
    excludes: frozenset[str]
    doc: str


#: Attribute a builder sets on a module class (or instance) to let a convention recognise it.
COST_ROLE = "cost_role"

#: name → convention. Every convention counts multiply-accumulates of convolutions and matrix products only.
CONVENTIONS: Registry[Convention] = Registry("madds convention")
for _convention in (
    Convention(
        "conv_linear",
        frozenset(),
        "every convolution (incl. transposed, grouped, depth-wise) and linear layer / matrix product, one per "
        "multiply-accumulate; no batch norm, activations, pooling, up-sampling or element-wise sums",
    ),
    Convention(
        "wu2017",
        frozenset({"projection_shortcut"}),
        "conv_linear without the projection-shortcut 1×1 convolutions of the ResNet-50s (Wu et al. 2017 "
        "Tables 1–5 are reproduced within 1% only when these four per backbone are left out)",
    ),
):
    CONVENTIONS.register(_convention.name, _convention)

# aten ops of torch.utils.flop_counter that are convolutions or matrix products (FLOPs = 2 · MACs for each).
_MAC_OPS = frozenset(
    getattr(torch.ops.aten, name)
    for name in (
        "convolution",
        "_convolution",
        "cudnn_convolution",
        "_slow_conv2d_forward",
        "convolution_overrideable",
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
    )
)


def resolve_convention(name: str) -> Convention:
    """The registered convention ``name``; a ``ValueError`` naming the allowed ones otherwise."""
    return CONVENTIONS.get(name)


def _zeros_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    device = next(iter(model.parameters()), torch.empty(0)).device
    return torch.zeros(*input_size, device=device)


def count_madds(
    model: nn.Module, input_size: Sequence[int] = (1, 3, 1024, 2048), *, convention: str = "conv_linear"
) -> int:
    """Multiply-adds of one eval-mode forward pass at ``input_size`` (N, C, H, W), as the papers count them.

    One per multiply-accumulate of a convolution (transposed, grouped and depth-wise included) or a linear layer /
    matrix product; nothing else — batch norm, activations, pooling, bilinear up-sampling and element-wise sums
    are free, as in the papers' "multiply-adds" (fvcore's wider total is :func:`count_flops`). The ops are
    counted as they execute (``torch.utils.flop_counter.FlopCounterMode``, FLOPs / 2), so data-dependent paths
    such as Wu et al.'s fast inference, which runs only some region crops, count what actually runs. Bias adds
    are not counted.

    ``convention`` (:data:`CONVENTIONS`) leaves out the modules whose ``cost_role`` it names: ``wu2017`` drops
    the projection shortcuts of the ResNet-50s (``resnet.ProjectionShortcut``), the reading under which Wu et
    al.'s Tables 1–5 match (README, "Cost counting").
    """

    excluded = resolve_convention(convention).excludes
    x = _zeros_input(model, input_size)
    counter = FlopCounterMode(display=False)

    def flops_so_far() -> int:
        return sum(v for op, v in counter.get_flop_counts().get("Global", {}).items() if op in _MAC_OPS)

    left_out = 0
    starts: dict[int, int] = {}

    def before(m: nn.Module, _inputs: object) -> None:
        starts[id(m)] = flops_so_far()

    def after(m: nn.Module, _inputs: object, _output: object) -> None:
        nonlocal left_out
        left_out += flops_so_far() - starts.pop(id(m))

    handles = []
    for module in model.modules():
        if getattr(module, COST_ROLE, None) in excluded:
            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(x)
        total = flops_so_far()
    finally:
        for h in handles:
            h.remove()
    return (total - left_out) // 2  # torch counts 2 FLOPs per multiply-accumulate


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 1024, 2048)) -> int:
    """fvcore's total of one eval-mode forward pass at ``input_size`` (its JIT trace): the convolutions and
    matrix products of :func:`count_madds` plus what fvcore also counts — batch norm, bilinear up-sampling,
    adaptive pooling and its other handled ops. Kept on the trial record as ``flops``; it is not comparable across
    builders (at 1024×2048 over ``count_madds``: +4.8% on NDNet45, +3.5% on Fast-SCNN, +3.0% on SPSSN, +1.9% on
    ICNet, +0.4% to +0.8% on the ResNet-50 FCNs)."""

    x = _zeros_input(model, input_size)
    with eval_mode(model), torch.no_grad():
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        return int(analysis.total())
