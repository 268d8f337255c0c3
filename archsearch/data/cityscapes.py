"""Cityscapes in its official layout; the 34 label ids map to 19 train ids (255 ignored).

Layout under ``data.root``: ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` and
``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``. The label definitions (ids, train ids, names) come from
``cityscapesscripts.helpers.labels``, the official scripts; native resolution 1024×2048.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS

from archsearch.data import DatasetInfo, SegDataset, load_pairs
from archsearch.util.errors import DataError

if TYPE_CHECKING:
    from archsearch.spec import DataSpec

NATIVE = (1024, 2048)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
LAYOUT = "the official Cityscapes layout leftImg8bit/{split}/{city}/*_leftImg8bit.png"


def _train_id_lut() -> np.ndarray:
    """256-entry label id → train id table; ids without a train id (and license plate, id -1) → 255."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label in _LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    return lut


def _class_names() -> tuple[str, ...]:
    by_train_id = {lb.trainId: lb.name for lb in _LABELS if 0 <= lb.trainId < 255}
    return tuple(by_train_id[i] for i in range(len(by_train_id)))


LUT = _train_id_lut()
INFO = DatasetInfo(name="cityscapes", num_classes=19, class_names=_class_names())


def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` paths of ``split`` sorted by file name; DataError when the layout is not there."""
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DataError(f"data.root: {root} has no leftImg8bit/{split}; expected {LAYOUT}")
    images = sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"), key=lambda p: p.name)
    if not images:
        raise DataError(f"data.root: {image_dir} has no {{city}}/*{IMAGE_SUFFIX} images; expected {LAYOUT}")
    out = []
    for image in images:
        label = root / "gtFine" / split / image.parent.name / (image.name[: -len(IMAGE_SUFFIX)] + LABEL_SUFFIX)
        if not label.is_file():
            raise DataError(
                f"data.root: {label} is missing; expected gtFine/{split}/{{city}}/*{LABEL_SUFFIX} beside each image"
            )
        out.append((image, label))
    return out


def load(spec: DataSpec, split: str, scale: float) -> SegDataset:
    """Split ``split`` at ``scale`` × 1024×2048 (first ``train_images``/``val_images`` by name), cached."""
    return load_pairs(spec, split, scale, info=INFO, native=NATIVE, layout=LAYOUT, lut=LUT, pairs=pairs)
