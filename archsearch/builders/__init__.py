"""Builders: one module per paper, registered by name with the paper's named variants.
``build(name, num_classes, **knobs)``; ``build("ndnet.ndnet45")``; ``variant("ndnet.ndnet45").paper``.

Each paper's builder module is imported below by name, and importing it registers its builders: adding a
paper is one module (or package) plus one import line here. A separate installed package adds builders through the
entry-point group ``archsearch.builders``, loaded at the first read of the registry (README, "Adding a builder").
"""

# The paper builders, imported by name for their registrations: one line per paper.
from archsearch.builders import (
    icnet,  # noqa: F401
    ndnet,  # noqa: F401
    pspnet,  # noqa: F401
    spssnet,  # noqa: F401
    wu2017,  # noqa: F401
)
from archsearch.builders.registry import (
    BuilderEntry,
    Knobs,
    ModelConfig,
    PluginError,
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

__all__ = [
    "BuilderEntry",
    "Knobs",
    "ModelConfig",
    "PluginError",
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
