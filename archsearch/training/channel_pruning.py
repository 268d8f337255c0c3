"""Progressive L1 kernel pruning (Zhao et al. 2018, Sec. 3.2 and 5.2, after Li et al. [13]).

"For each filter, we calculate the L1 sum of its kernel weights. Then we sort these sums in a descending order
for ranking. Finally, we remove those least important kernels." And progressively: "Taking compression rate 1/2
as an example, instead of removing a half of kernels directly, we first choose to keep 3/4 of the kernels and
initialize this compressed model for following fine tuning. After it is done, we remove more kernels and repeat
this process until the goal of compression is achieved."

- :func:`schedule` — the keep rates to step through (default: down in quarters, 1 → 3/4 → 1/2 → 1/4, then the
  target keep rate);
- :func:`prune_to` — one structural step: the result is exactly ``build(..., keep_rate=r)`` (each prunable
  convolution keeps ``round(r·C_full)`` filters) with the highest-L1 filters of the source copied in, and the
  batch norms and the next layers' input channels sliced to match;
- :func:`progressive` — train the full-width model, then prune and fine-tune step by step.

Channels that must share one selection are found by Torch-Pruning's dependency graph (traced in train mode, so
the auxiliary heads are included): all outputs summed in one residual stage (the stage's projection shortcut and
every unit's last convolution), the pyramid-pooling sum, the two inputs of a CFF sum. Such a group is ranked by
the summed L1 norms of its convolutions' filters, every group on the unpruned weights of the step's source
("independent" pruning in [13]), so the result does not depend on the order of the groups. The ICNet shared
branch is literally the same modules, so it stays consistent by construction. Prunable: every convolution except
the classifiers, whose outputs are the classes (their widths do not change with the keep rate, so nothing is
removed from them); the input convolutions' 3 input channels are never pruned (no layer produces them).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp

from archsearch.builders import build, config_of, get
from archsearch.builders.layers import SegOutput
from archsearch.cost import count_params

DEFAULT_LADDER = (0.75, 0.5, 0.25)  # Sec. 5.2: remove a quarter of the original kernels per step
TRACE_INPUT = (2, 3, 64, 64)  # small input for tracing the dependency graph (batch 2: batch norm in train mode)


def schedule(keep_rate: float, steps: Sequence[float] | None = None) -> list[float]:
    """Keep rates to step through after the full-width model, ending at ``keep_rate``.

    ``steps`` is a ladder of keep rates (``proxy.prune_schedule``): strictly decreasing, each in (0, 1]. The
    schedule is the rungs strictly between ``keep_rate`` and 1, then ``keep_rate`` itself — so one ladder serves
    a search over several keep rates, and a ladder that ends at ``keep_rate`` is used as given. Without ``steps``
    the ladder is 3/4, 1/2, 1/4 (Sec. 5.2): ``schedule(0.5) == [0.75, 0.5]``, ``schedule(0.25) == [0.75, 0.5,
    0.25]``, ``schedule(0.6) == [0.75, 0.6]``. A keep rate of 1 needs no pruning: ``[]``.
    """
    if not 0.0 < keep_rate <= 1.0:
        raise ValueError(f"keep_rate {keep_rate}: must be in (0, 1]")
    ladder = tuple(float(s) for s in (DEFAULT_LADDER if steps is None else steps))
    for s in ladder:
        if not 0.0 < s <= 1.0:
            raise ValueError(f"prune schedule {list(ladder)}: every keep rate must be in (0, 1], got {s}")
    if any(b >= a for a, b in itertools.pairwise(ladder)):
        raise ValueError(f"prune schedule {list(ladder)}: keep rates must be strictly decreasing")
    if keep_rate == 1.0:
        return []
    return [s for s in ladder if keep_rate < s < 1.0] + [float(keep_rate)]


def filter_l1(conv: nn.Conv2d) -> torch.Tensor:
    """L1 sum of each filter's kernel weights (one value per output channel)."""
    return conv.weight.detach().abs().sum(dim=(1, 2, 3))


def _outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, SegOutput):
        return [out.logits] + [a for _, a in out.aux]
    return [out]


def _train_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """Torch-Pruning puts the model in eval mode before tracing; trace the train-mode forward instead."""
    return model.train()(x)


def _dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced in train mode (auxiliary heads included); the traced
    forward's batch-norm statistics updates are undone."""
    state = copy.deepcopy(model.state_dict())
    device = next(model.parameters()).device
    example = torch.randn(*TRACE_INPUT, generator=torch.Generator().manual_seed(0)).to(device)
    graph = tp.DependencyGraph().build_dependency(
        model, example, forward_fn=_train_forward, output_transform=_outputs, verbose=False
    )
    model.load_state_dict(state)
    return graph


def _index_pair(i: Any) -> tuple[int, int]:
    """(channel index in this layer, channel index in the group's root layer) of a Torch-Pruning index."""
    if hasattr(i, "root_idx"):
        return int(i.idx), int(i.root_idx)
    return int(i), int(i)


def _plan_group(graph: tp.DependencyGraph, group: Any, target_out: dict[nn.Module, int]) -> list[int]:
    """Channels of one group of coupled channels to remove: all but the target width's highest summed-L1 ones."""
    size = len(group[0][1])
    convs = [
        (dep.target.module, idxs)
        for dep, idxs in group
        if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Conv2d)
    ]
    widths = {target_out[m] for m, _ in convs}
    if len(widths) != 1:
        names = [graph._module2name.get(m, "?") for m, _ in convs]  # noqa: SLF001 — for the message; no public lookup
        raise RuntimeError(f"coupled convolutions {names} have different target widths {sorted(widths)}")
    keep = widths.pop()
    if keep > size:
        raise ValueError(f"cannot prune {size} channels up to {keep}: the target keep rate is above the model's")
    if keep == size:
        return []
    importance = torch.zeros(size)
    for module, idxs in convs:
        own, root = zip(*(_index_pair(i) for i in idxs), strict=False)
        importance.index_add_(0, torch.tensor(root), filter_l1(module).cpu()[torch.tensor(own)])
    order = torch.argsort(importance, descending=True, stable=True)
    return sorted(int(i) for i in order[keep:])


def _prune_knob(builder: str) -> str:
    """The knob ``builder``'s registration declares for pruning (``register(..., prune_knob=...)``)."""
    knob_name = get(builder).prune_knob
    if knob_name is None:
        raise ValueError(f"builder {builder!r} declares no prune_knob: it is not prunable")
    return knob_name


def prune_to(model: nn.Module, keep_rate: float) -> nn.Module:
    """One pruning step: a NEW ``build(builder, num_classes, **knobs, keep_rate=keep_rate)`` holding the
    highest-L1 filters of ``model``.

    ``keep_rate`` is relative to the full width (each prunable convolution keeps ``round(keep_rate·C_full)``
    filters), so ``model`` may itself be pruned already (progressive pruning). ``model`` and the global random
    stream are left unchanged; the result is on ``model``'s device, in its train/eval mode, and carries the
    :class:`~archsearch.builders.ModelConfig` of the target build.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream (training seeds) untouched
        return _prune_to(model, keep_rate)


def _prune_to(model: nn.Module, keep_rate: float) -> nn.Module:
    config = config_of(model)
    knob_name = _prune_knob(config.builder)
    target = build(config.builder, config.num_classes, **{**config.knobs.as_dict(), knob_name: keep_rate})
    device = next(model.parameters()).device
    work = copy.deepcopy(model).cpu()
    names_src = dict(work.named_modules())
    target_modules = dict(target.named_modules())
    target_out: dict[nn.Module, int] = {
        m: _conv(target_modules[name]).out_channels for name, m in names_src.items() if isinstance(m, nn.Conv2d)
    }
    graph = _dependency_graph(work)
    # Rank every group on the unpruned weights first (a filter's L1 sum counts all its kernels, also those whose
    # input channels another group removes), then remove.
    plan = [
        (group[0][0], _plan_group(graph, group, target_out))
        for group in graph.get_all_groups(root_module_types=(nn.Conv2d,))
    ]
    for root, removed in plan:
        if removed:
            graph.get_pruning_group(root.target.module, root.handler, removed).prune()
    target.load_state_dict(work.state_dict())  # strict: every shape must be the target's
    return target.to(device).train(model.training)


def iteration_split(iterations: int, n_steps: int) -> list[int]:
    """Iterations per phase: half (rounded up) for the full-width model, the rest evenly across the pruning
    steps (the later steps take any remainder); all of them for the full model when there is no step."""
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if n_steps == 0:
        return [iterations]
    full = math.ceil(iterations / 2)
    rest = iterations - full
    base, extra = divmod(rest, n_steps)
    return [full] + [base + (1 if i >= n_steps - extra else 0) for i in range(n_steps)]


def progressive(
    builder: str,
    knobs: dict[str, Any],
    num_classes: int,
    fit: Callable[..., None],
    iterations: int,
    steps: Sequence[float] | None = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Progressive compression (Sec. 5.2): build the ``keep_rate`` 1 model, train it, then for each keep rate
    of :func:`schedule` prune (:func:`prune_to`) and fine-tune, ``fit(model, n_iters, phase_name, start=k)``
    training in place, ``k`` the iterations the earlier phases ran. ``iterations`` is split by
    :func:`iteration_split` (half for the full model, the rest evenly across the steps): every keep rate trains
    the same total, and the phases are meant to continue one learning-rate schedule from iteration ``k`` (no
    restart), so a keep rate differs from another by its pruning only, not by its budget. Returns the final
    model and the history ``[{"keep_rate", "params", "iterations", "start"}, ...]``, the full-width phase first.
    """
    knob_name = _prune_knob(builder)
    target = float(knobs.get(knob_name, get(builder).defaults()[knob_name]))
    rates = schedule(target, steps)
    split = iteration_split(iterations, len(rates))
    model = build(builder, num_classes, **{**knobs, knob_name: 1.0})
    history: list[dict[str, Any]] = []
    done = 0
    for rate, n in zip([1.0, *rates], split, strict=False):
        if rate != 1.0:
            model = prune_to(model, rate)
        if n > 0:
            fit(model, n, "full" if rate == 1.0 else f"keep {rate:g}", start=done)
        history.append({"keep_rate": rate, "params": count_params(model), "iterations": n, "start": done})
        done += n
    return model, history


def _conv(module: nn.Module) -> nn.Conv2d:
    """The target build's layer of the same name as a convolution of the source: a convolution too."""
    assert isinstance(module, nn.Conv2d), type(module).__name__
    return module
