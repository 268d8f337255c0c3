"""A batch on the training device: widened and normalised there (:func:`to_device`), then augmented: random scale,
random crop (or back to size), flip.

Each sample draws its own scale, crop offset and flip from ``generator``; the same generator state gives the
same output. Images are scaled bilinearly, labels nearest (so they keep only ids present before, or 255 where
padding was needed).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

IGNORE = 255


def normalisation(info: Any) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """A data set's ``(mean, std)`` for :func:`to_device` (its ``info.mean``/``info.std``; none: identity)."""
    return getattr(info, "mean", (0.0, 0.0, 0.0)), getattr(info, "std", (1.0, 1.0, 1.0))


def to_device(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch moved to ``device`` (asynchronously from pinned memory) and widened there: uint8 images
    ``(N, 3, H, W)`` to float32 normalised as ``(x − 255·mean) / (255·std)``, labels to int64. Images that are
    not uint8 are taken as already normalised and only cast to float32."""
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True).long()
    if images.dtype != torch.uint8:
        return images.float(), labels
    m, s = _normaliser(device, tuple(mean), tuple(std))
    return (images.float() - m) / s, labels


@functools.cache
def _normaliser(device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, ...]:
    """``255·mean`` and ``255·std`` as ``(1, 3, 1, 1)`` float32 tensors on ``device``, made once per device."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return m.to(device), s.to(device)


def augment(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    crop: tuple[int, int] | None,
    scale_range: tuple[float, float],
    flip: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: ``images`` float ``(N, 3, H, W)`` (normalised), ``labels`` int ``(N, H, W)``.

    Each sample is scaled by ``s ~ U(scale_range)``, then cropped at a random place to ``crop`` (or to the input
    size when ``crop`` is None), padding images with 0 and labels with 255 where the scaled sample is smaller,
    and flipped horizontally with probability ½ when ``flip``. Returns ``(N, 3, h, w)`` and ``(N, h, w)``.
    """
    n, _, h, w = images.shape
    if labels.shape != (n, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}")
    out_h, out_w = crop if crop is not None else (h, w)
    lo, hi = scale_range
    draws = torch.rand((n, 4), generator=generator, device=generator.device).cpu().tolist()
    out_images = images.new_zeros((n, images.shape[1], out_h, out_w))
    out_labels = labels.new_full((n, out_h, out_w), IGNORE)
    for i, (u_scale, u_y, u_x, u_flip) in enumerate(draws):
        s = lo + (hi - lo) * u_scale
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        image, label = images[i : i + 1], labels[i : i + 1, None]
        if (sh, sw) != (h, w):
            image = F.interpolate(image, size=(sh, sw), mode="bilinear", align_corners=False)
            label = F.interpolate(label.float(), size=(sh, sw), mode="nearest").to(labels.dtype)
        # place the scaled sample and the output window at random offsets (one of them is zero per axis)
        y, x = round(u_y * abs(sh - out_h)), round(u_x * abs(sw - out_w))
        src_y, dst_y = (y, 0) if sh >= out_h else (0, y)
        src_x, dst_x = (x, 0) if sw >= out_w else (0, x)
        ch, cw = min(sh, out_h), min(sw, out_w)
        image = image[0, :, src_y : src_y + ch, src_x : src_x + cw]
        label = label[0, 0, src_y : src_y + ch, src_x : src_x + cw]
        if flip and u_flip < 0.5:
            # flip the placed window so that flipping is a mirror of the whole output
            image, label = image.flip(-1), label.flip(-1)
            dst_x = out_w - cw - dst_x
        out_images[i, :, dst_y : dst_y + ch, dst_x : dst_x + cw] = image
        out_labels[i, dst_y : dst_y + ch, dst_x : dst_x + cw] = label
    return out_images, out_labels
