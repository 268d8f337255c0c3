"""Data sets for the proxy: ``load(spec, split, scale)`` → a :class:`SegDataset` of cached, resized arrays.

- ``cityscapes`` (official layout, 19 train ids), ``camvid`` (SegNet layout, 11 classes) and ``synthetic``
  (procedural street scenes with the 19 Cityscapes classes, the embedded default);
- each image is decoded once per data set, split, resolution and limit into ``spec.cache_dir`` (``cache.py``);
- items are uint8 (images and labels as the cache holds them): a batch crosses to the device at a quarter of
  float32's bytes and is widened and normalised there (``transforms.to_device``), where training augments it
  (``transforms.augment``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from archsearch.data import cache
from archsearch.util.errors import DataError
from archsearch.util.registry import Registry

if TYPE_CHECKING:
    from archsearch.spec import DataSpec

#: Data set name → the module that loads it (``INFO``, ``load``, optionally ``NATIVE``), imported at first use.
DATASETS: Registry[str] = Registry(
    "data set",
    error=lambda name, allowed: DataError(f"data.name: unknown data set '{name}'; expected one of {allowed}"),
)
DATASETS.register("cityscapes", f"{__name__}.cityscapes")
DATASETS.register("camvid", f"{__name__}.camvid")
DATASETS.register("synthetic", f"{__name__}.synthetic")
NAMES = DATASETS.names()
#: Fewest DataLoader worker processes on CUDA: the GPU must not wait for the host to gather a batch.
CUDA_WORKERS = 2


def loader_workers(workers: int, device: torch.device | str) -> int:
    """DataLoader worker processes: ``workers`` (``proxy.workers``), at least :data:`CUDA_WORKERS` on CUDA."""
    return max(int(workers), CUDA_WORKERS) if torch.device(device).type == "cuda" else int(workers)


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is: its classes, the ignored label and the normalisation of its images."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class SegDataset(torch.utils.data.Dataset):
    """Images and train-id labels at one resolution (arrays, possibly read-only memory maps of the cache).

    ``dataset[i]`` is ``(image, label)``: uint8 ``(3, H, W)`` and uint8 ``(H, W)`` with ``info.ignore_index`` for
    pixels to ignore; :func:`archsearch.data.transforms.to_device` normalises a batch of them with
    ``info.mean``/``info.std`` on the device.
    """

    def __init__(self, info: DatasetInfo, images: np.ndarray, labels: np.ndarray) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != images.shape[:3] or labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 {images.shape[:3]}, got {labels.dtype} {labels.shape}")
        self.info = info
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.array(self.images[i], copy=True)).permute(2, 0, 1)
        return image, torch.from_numpy(np.array(self.labels[i], copy=True))

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])


class ScoringDataset(torch.utils.data.Dataset):
    """Images at the proxy resolution with the labels at the data set's own resolution, for scoring.

    ``dataset[i]`` is ``(image (3, h, w), label (H, W))``: the model sees what it was trained on, and its logits
    are up-sampled to the labels' own resolution, as the papers and every benchmark score (a prediction is never
    scored against labels shrunk to the proxy's resolution).
    """

    def __init__(self, images: SegDataset, labels: SegDataset) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.info = images.info
        self.images = images
        self.labels = labels.labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i][0], torch.from_numpy(np.array(self.labels[i], copy=True))

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images (the proxy resolution)."""
        return self.images.size

    @property
    def label_size(self) -> tuple[int, int]:
        """``(H, W)`` of the labels (the data set's own resolution)."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])


def _module(name: str) -> ModuleType:
    """The module of data set ``name`` (:data:`DATASETS`)."""
    return importlib.import_module(DATASETS.get(name))


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a data set, without loading anything."""
    return _module(name).INFO


def resolution(native: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(round(H·scale), round(W·scale))``; at least one pixel each."""
    if not scale > 0:
        raise DataError(f"proxy.scale: {scale}; expected a positive number")
    return max(1, round(native[0] * scale)), max(1, round(native[1] * scale))


def limit(spec: DataSpec, split: str) -> int | None:
    """How many images of ``split`` the spec asks for (``train_images`` / ``val_images``), None: all."""
    n, key = (spec.train_images, "train_images") if split == spec.train_split else (spec.val_images, "val_images")
    if n is not None and n < 1:
        raise DataError(f"data.{key}: {n}; expected a positive number of images")
    return n


def data_root(spec: DataSpec, expected: str) -> Path:
    """``spec.root`` with ``${VAR}`` and ``~`` expanded (the spec loader does it too; defensive), checked to be a
    readable folder; ``expected`` describes the layout for the error message."""
    if not spec.root:
        raise DataError(f"data.root: not set; the {spec.name} data set needs a folder with {expected}")
    root = Path(os.path.expanduser(os.path.expandvars(str(spec.root))))
    if not root.exists():
        raise DataError(f"data.root: {root} does not exist; expected a folder with {expected}")
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data.root: {root} is not a readable folder; expected a folder with {expected}")
    return root


def load_pairs(
    spec: DataSpec,
    split: str,
    scale: float,
    *,
    info: DatasetInfo,
    native: tuple[int, int],
    layout: str,
    lut: np.ndarray,
    pairs: Callable[[Path, str], list[tuple[Path, Path]]],
) -> SegDataset:
    """Load a folder data set of (image, label) PNG pairs through the cache (cityscapes, camvid).

    ``pairs(root, split)`` lists the files; the first ``train_images``/``val_images`` by name are kept; labels
    map through ``lut`` to train ids (255 ignored); images and labels resize to ``scale`` × ``native``.
    """

    root = data_root(spec, layout)
    files = pairs(root, split)
    n = limit(spec, split)
    files = files[:n] if n is not None else files
    size = resolution(native, scale)
    key = cache.file_key(root, [p for pair in files for p in pair])

    def fill(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = files[i]
        return cache.read_image(image, size), cache.read_label(label, size, lut)

    images, labels = cache.cached(spec.cache_dir, info.name, split, size, len(files), key, fill)
    return SegDataset(info, images, labels)


def load(spec: DataSpec, split: str, scale: float) -> SegDataset:
    """Split ``split`` of the data set ``spec.name`` at ``scale`` × its native resolution, through the cache.

    Native resolutions: cityscapes 1024×2048, camvid 360×480, synthetic ``spec.size``. ``train_images`` /
    ``val_images`` keep the first N images (sorted by name). Raises :class:`DataError` with one line naming the
    key or path when the root is missing or unreadable, the name unknown or the split empty.
    """
    return _module(spec.name).load(spec, split, scale)


def native_size(spec: DataSpec) -> tuple[int, int]:
    """The data set's own ``(H, W)``: cityscapes 1024×2048, camvid 360×480, synthetic ``spec.size``."""
    native = getattr(_module(spec.name), "NATIVE", None)
    return (int(native[0]), int(native[1])) if native is not None else (int(spec.size[0]), int(spec.size[1]))


def load_scoring(spec: DataSpec, split: str, scale: float) -> SegDataset | ScoringDataset:
    """Split ``split`` for evaluation: images at ``scale`` × the native resolution, labels at the native one
    (:class:`ScoringDataset`; where the two resolutions agree simply :func:`load`). Both go through the cache."""
    images = load(spec, split, scale)
    if images.size == native_size(spec):
        return images
    return ScoringDataset(images, load(spec, split, 1.0))


__all__ = [
    "CUDA_WORKERS",
    "DATASETS",
    "NAMES",
    "DatasetInfo",
    "ScoringDataset",
    "SegDataset",
    "info",
    "load",
    "load_scoring",
    "loader_workers",
    "resolution",
]
