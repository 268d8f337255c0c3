"""archsearch — architecture ablation and search for real-time semantic segmentation."""

from archsearch.builders import build

__all__ = ["build"]
__version__ = "0.1.0"
