"""Builders: one module per paper, registered by name with the paper's named variants.
``build(name, num_classes, **knobs)``; ``build("ndnet.ndnet45")``; ``variant("ndnet.ndnet45").paper``.

Every module in this package (other than the registry and shared blocks) is imported here, and importing it
registers its builders, so adding a paper is adding one file.
"""

import importlib
import pkgutil

from archsearch.builders.registry import (
    BuilderEntry,
    Knobs,
    ModelConfig,
    Variant,
    build,
    config_of,
    format_variants,
    get,
    knob,
    names,
    register,
    variant,
    variants,
)

_SHARED = {"registry", "layers", "resnet"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _SHARED and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BuilderEntry",
    "Knobs",
    "ModelConfig",
    "Variant",
    "build",
    "config_of",
    "format_variants",
    "get",
    "knob",
    "names",
    "register",
    "variant",
    "variants",
]
