"""Typed access to a built model's parts for the tests.

``archsearch.build`` returns an ``nn.Module``, so ``model.backbone.layer1[0].conv1`` reads as ``Tensor | Module``
to a type checker (``nn.Module.__getattr__``). :func:`submodule` looks the part up by its dotted name and checks
its class, which both narrows the type and states what the test expects the part to be.
"""

from __future__ import annotations

from typing import TypeVar

import torch.nn as nn

M = TypeVar("M", bound=nn.Module)


def submodule(model: nn.Module, name: str, kind: type[M]) -> M:
    """The submodule ``name`` (dotted, list indices as numbers: ``backbone.layer1.0.conv1``) of ``model``,
    asserted to be a ``kind``."""
    module = model.get_submodule(name)
    assert isinstance(module, kind), f"{name} is a {type(module).__name__}, not a {kind.__name__}"
    return module
