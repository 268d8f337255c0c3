"""CamVid in the SegNet layout: 11 classes (Sturgess et al. protocol), label 11 (unlabelled) ignored.

Layout under ``data.root``: ``{split}/*.png`` images (480×360 RGB) and ``{split}annot/*.png`` labels
(single channel, values 0..11), paired by file name; the ``{split}.txt`` lists hold absolute paths of another
machine and are not used. Native resolution 360×480; labels are resized nearest, images bilinear.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from archsearch.data import DatasetInfo, SegDataset, load_pairs
from archsearch.util.errors import DataError

if TYPE_CHECKING:
    from archsearch.spec import DataSpec

NATIVE = (360, 480)
LAYOUT = "the SegNet CamVid layout {split}/*.png with labels {split}annot/*.png"
CLASS_NAMES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign/symbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
INFO = DatasetInfo(name="camvid", num_classes=11, class_names=CLASS_NAMES)
LUT = np.array([i if i < len(CLASS_NAMES) else 255 for i in range(256)], dtype=np.uint8)  # 11 unlabelled → 255


def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of ``split`` sorted by file name; DataError when the layout is not there."""
    image_dir, label_dir = root / split, root / f"{split}annot"
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"data.root: {root} has no {folder.name}/; expected {LAYOUT}")
    images = sorted(image_dir.glob("*.png"), key=lambda p: p.name)
    if not images:
        raise DataError(f"data.root: {image_dir} has no *.png images; expected {LAYOUT}")
    out = []
    for image in images:
        label = label_dir / image.name
        if not label.is_file():
            raise DataError(f"data.root: {label} is missing; expected a label of the same name for each image")
        out.append((image, label))
    return out


def load(spec: DataSpec, split: str, scale: float) -> SegDataset:
    """Split ``split`` at ``scale`` × 360×480 (first ``train_images``/``val_images`` by name), cached."""
    return load_pairs(spec, split, scale, info=INFO, native=NATIVE, layout=LAYOUT, lut=LUT, pairs=pairs)
