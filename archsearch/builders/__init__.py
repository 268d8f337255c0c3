"""Builders: one module per paper, registered by name. ``build(name, num_classes, **knobs)``."""

from archsearch.builders.registry import BuilderEntry, Knobs, build, get, knob, names, register

# Importing a paper's module registers its builders.
from archsearch.builders import ndnet as _ndnet  # noqa: E402,F401

__all__ = ["BuilderEntry", "Knobs", "build", "get", "knob", "names", "register"]
