"""archsearch — architecture ablation and search for real-time semantic segmentation.

The Python API, reached from here whatever module a name lives in (as timm's ``create_model``):
``build``, ``config_of``, ``variant``, ``variants`` and ``builder_names`` (the builder registry),
``count_params``, ``count_madds``, ``count_flops`` and ``latency`` (cost under the latency protocol) and
``load_spec`` (a spec file, validated).
"""

from archsearch.builders import build, config_of, variant, variants
from archsearch.builders import names as builder_names
from archsearch.cost import count_flops, count_madds, count_params, latency
from archsearch.spec import load as load_spec

__all__ = [
    "__version__",
    "build",
    "builder_names",
    "config_of",
    "count_flops",
    "count_madds",
    "count_params",
    "latency",
    "load_spec",
    "variant",
    "variants",
]
__version__ = "0.1.0"
