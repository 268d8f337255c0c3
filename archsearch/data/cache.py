"""Decode each image once: resized ``images.npy`` / ``labels.npy`` (uint8) per data set, split, size and limit.

Layout: ``<cache_dir>/<name>-<split>-<H>x<W>-<n>-<hash>/{images,labels}.npy`` where the hash covers the data
root and the file list (names, sizes, modification times), so a changed data set is decoded again. Files are
written to a temporary name and renamed, so concurrent workers never read half a file; ``images.npy`` is
renamed last and marks a complete entry. Later loads memory-map them read-only (``np.load(mmap_mode="r")``).

This module also holds the PNG readers (``read_image``, ``read_label``) that fill the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from archsearch.util.errors import DataError

PROGRESS_MIN = 32  # show a progress bar when decoding at least this many images

Fill = Callable[[int], tuple[np.ndarray, np.ndarray]]


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """RGB image as uint8 ``(H, W, 3)`` resized to ``size = (H, W)`` (bilinear, antialiased when shrinking)."""
    with _open(path) as im:
        im = im.convert("RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(im, dtype=np.uint8)


def read_label(path: Path, size: tuple[int, int], lut: np.ndarray) -> np.ndarray:
    """Single-channel label PNG mapped through the 256-entry ``lut`` and resized to ``size`` (nearest)."""
    with _open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: label image has mode {im.mode}; expected a single-channel PNG of label ids")
        if im.mode != "L":
            im = im.convert("L") if im.mode == "P" else Image.fromarray(np.asarray(im).astype(np.uint8))
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.NEAREST)
        return lut[np.asarray(im, dtype=np.uint8)]


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image ({exc}); expected a readable PNG") from exc


def file_key(root: Path, paths: Iterable[Path]) -> list[str]:
    """Identity of a file list for the cache hash: path relative to ``root``, size and modification time."""
    key = [str(root.resolve())]
    for p in paths:
        st = p.stat()
        key.append(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    return key


def entry_dir(cache_dir: str, name: str, split: str, size: tuple[int, int], n: int, key: Sequence[str]) -> Path:
    """The folder of one cache entry."""
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    safe_split = re.sub(r"[^A-Za-z0-9_.]+", "_", split)
    return Path(cache_dir) / f"{name}-{safe_split}-{size[0]}x{size[1]}-{n}-{digest}"


def cached(
    cache_dir: str | None,
    name: str,
    split: str,
    size: tuple[int, int],
    n: int,
    key: Sequence[str],
    fill: Fill,
) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of ``n`` items at ``size``: memory maps of the cache entry, filled on first use.

    ``fill(i)`` returns item ``i`` as uint8 ``(H, W, 3)`` and ``(H, W)``; it is called only when the entry is
    missing. With no ``cache_dir`` the arrays are decoded into memory.
    """
    if not cache_dir:
        return _decode(name, split, size, n, fill, None)
    folder = entry_dir(os.path.expanduser(os.path.expandvars(cache_dir)), name, split, size, n, key)
    images, labels = folder / "images.npy", folder / "labels.npy"
    if not (images.exists() and labels.exists()):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"data.cache_dir: cannot create {folder} ({exc}); expected a writable folder") from exc
        _decode(name, split, size, n, fill, folder)
        (folder / "key.json").write_text(json.dumps({"name": name, "split": split, "size": size, "key": list(key)}))
    return np.load(images, mmap_mode="r"), np.load(labels, mmap_mode="r")


def _decode(
    name: str, split: str, size: tuple[int, int], n: int, fill: Fill, folder: Path | None
) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    tmp_dir = None
    if folder is None:
        images, labels = np.empty((n, h, w, 3), np.uint8), np.empty((n, h, w), np.uint8)
    else:  # write straight into memory-mapped temporary files: a full-resolution split need not fit in memory
        tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        images = np.lib.format.open_memmap(tmp_dir / "images.npy", mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        labels = np.lib.format.open_memmap(tmp_dir / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, h, w))
    try:
        quiet = n < PROGRESS_MIN or bool(os.environ.get("TQDM_DISABLE"))  # `archsearch run -q` sets it
        for i in tqdm(range(n), desc=f"decoding {name} {split} {h}x{w}", disable=quiet, leave=False):
            images[i], labels[i] = fill(i)
        if tmp_dir is not None and folder is not None:
            assert isinstance(images, np.memmap) and isinstance(labels, np.memmap)  # opened above on this path
            images.flush()
            labels.flush()
            del images, labels
            os.replace(tmp_dir / "labels.npy", folder / "labels.npy")
            os.replace(tmp_dir / "images.npy", folder / "images.npy")  # last: marks the entry complete
            return np.empty(0), np.empty(0)
        return images, labels
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
