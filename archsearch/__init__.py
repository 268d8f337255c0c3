"""archsearch — architecture ablation and search for real-time semantic segmentation."""

from archsearch.builders import build, config_of

__all__ = ["build", "config_of"]
__version__ = "0.1.0"
