"""Spatial sparsity of Wu et al. (2017), Sec. 3.3–3.4 and 4.4: regions, the sparse weight map, its penalty.

- :class:`SparseWeight` — "a single τ×τ convolution kernel with a stride of τ" over the half-resolution
  column's features gives one logit ``s`` per square region (shape ``(N, H, W)``).
- :class:`SparsityPenalty` — ``λ·(−p log q − (1−p) log(1−q))`` (Eq. 1) with ``q = α·q_old + (1−α)·r`` (Eq. 2),
  ``r`` the per-image mean of ``sigmoid(s)`` (Eq. 4) or, as an option, the per-location mean over the batch
  (Eq. 3). ``q_old`` is a buffer; gradients flow through ``r`` only.
- :func:`top_regions` — winner-take-all: the ``k = ⌊p·H·W⌋`` regions with the largest ``s`` per image
  (Sec. 4.4: "we always skip the same number of regions per image"; Table 3 lists p = 0.4 as 12/32 and
  p = 0.13 as 4/32, i.e. the floor).
- :func:`crop_regions` / :func:`uncrop_regions` — cut an image into its region grid as separate samples and put
  per-region maps back together ("uncrop", Sec. 3.4), optionally only for the computed regions (zeros elsewhere).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def regions_to_keep(p: float, num_regions: int) -> int:
    """``k = ⌊p·R⌋``, at least one (Table 3: 16, 12, 8, 6, 4 of 32 for p = 0.5, 0.4, 0.25, 0.2, 0.13)."""
    return max(1, min(num_regions, math.floor(p * num_regions + 1e-9)))


def top_regions(s: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask ``(N, H, W)`` of the ``k`` largest entries of ``s`` per image."""
    n = s.shape[0]
    flat = s.reshape(n, -1)
    idx = flat.topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter(1, idx, 1.0) > 0.5
    return mask.view_as(s)


def region_pixels(region_size: int, reference: int, height: int) -> int:
    """Side in pixels of the regions at an input ``height``: ``region_size`` at ``reference``, scaled with the
    input to the nearest multiple of 32 (at least 32: the full column's stride), so the region grid stays the
    paper's (256 at 1024 → 64 at 256: 4×8 regions on 1024×2048 and on 256×512)."""
    return max(32, 32 * round(region_size * height / reference / 32))


class SparseWeight(nn.Module):
    """τ×τ convolution with stride τ: one logit per region (Sec. 3.3).

    ``forward(features, tau)`` applies it to regions of ``tau`` feature vectors a side (regions smaller or
    larger than at the reference input): the kernel is resampled by area to ``tau``×``tau`` and scaled by
    ``(τ / tau)²`` — exactly the τ×τ kernel on the features up-sampled (nearest) to τ per region when ``tau``
    divides τ, so a region's logit keeps its meaning at the proxy scale. At ``tau = τ`` it is the plain layer.
    """

    def __init__(self, in_ch: int, tau: int) -> None:
        super().__init__()
        self.tau = tau
        self.conv = nn.Conv2d(in_ch, 1, tau, stride=tau)

    def forward(self, features: torch.Tensor, tau: int | None = None) -> torch.Tensor:
        if tau is None or tau == self.tau:
            return self.conv(features)[:, 0]
        weight = F.adaptive_avg_pool2d(self.conv.weight, tau) * (self.tau / tau) ** 2
        return F.conv2d(features, weight, self.conv.bias, stride=tau)[:, 0]


class SparsityPenalty(nn.Module):
    """Eq. 1–4: cross entropy between the target active probability ``p`` and the moving average ``q``.

    The value is Eq. 1 (``λ·CE(p, q)``, averaged over the images or locations). Its gradient is the one of
    reference [12] (Hinton's guide to RBMs, Sec. 11.1, where Eq. 1–2 come from): "the derivative of the cross
    entropy with respect to the total input of a unit is simply ``q − p``" — each region logit ``s_{i,y,x}``
    receives ``λ·(q − p)``, scaled by ``1/N`` like the cross-entropy of its image in the batch mean. Back-propagating
    Eq. 1 literally through Eq. 2 instead would scale it by ``(1 − α)`` and divide it over the ``H·W`` regions and
    by ``q(1 − q)``: at the paper's λ it would hardly act, and λ and ``p`` would not mean what they mean there.
    """

    q: torch.Tensor  # buffers (register_buffer in __init__)
    q_location: torch.Tensor

    def __init__(self, p: float, lam: float, alpha: float = 0.9, estimate: str = "image") -> None:
        super().__init__()  # estimate: "image" (Eq. 4) or "location" (Eq. 3), validated by the knobs
        self.p, self.lam, self.alpha, self.estimate = p, lam, alpha, estimate
        # q_old of Eq. 2. Eq. 4: one scalar; Eq. 3: one value per region location (the grid follows the input).
        self.register_buffer("q", torch.full((1,), float(p)))
        self.register_buffer("q_location", torch.empty(0), persistent=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(s.detach())
        n = s.shape[0]
        if self.estimate == "image":
            r = prob.mean(dim=(1, 2))  # Eq. 4: r_i
            q_old = self.q
        else:
            r = prob.mean(dim=0)  # Eq. 3: r_{y,x}
            if self.q_location.shape != r.shape:
                self.q_location = torch.full_like(r, float(self.p))
            q_old = self.q_location
        q = (self.alpha * q_old + (1.0 - self.alpha) * r).clamp(1e-6, 1.0 - 1e-6)  # Eq. 2
        value = self.lam * (-self.p * torch.log(q) - (1.0 - self.p) * torch.log(1.0 - q)).mean()  # Eq. 1
        # d/ds_{i,y,x} = λ·(q − p)/N: q per image (Eq. 4, broadcast over its regions) or per location (Eq. 3)
        delta = (q - self.p)[:, None, None] if self.estimate == "image" else (q - self.p)[None]
        surrogate = self.lam * (delta * s).sum() / n
        with torch.no_grad():
            if self.estimate == "image":
                self.q.copy_(q.mean().reshape(1))
            else:
                self.q_location = q.clone()
        return value.to(s.dtype) + surrogate - surrogate.detach()


def crop_regions(x: torch.Tensor, region: int) -> torch.Tensor:
    """``(N, C, H·r, W·r)`` → ``(N·H·W, C, r, r)``: every region as its own sample, row-major per image."""
    n, c, h, w = x.shape
    gh, gw = h // region, w // region
    x = x.view(n, c, gh, region, gw, region).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n * gh * gw, c, region, region)


def uncrop_regions(
    crops: torch.Tensor, batch: int, grid: tuple[int, int], index: torch.Tensor | None = None
) -> torch.Tensor:
    """Put per-region maps back into whole-image maps ``(N, C, H·h, W·w)``.

    ``index`` lists which of the ``N·H·W`` regions ``crops`` holds (fast inference); the others are zeros.
    """
    gh, gw = grid
    if index is not None:
        full = crops.new_zeros((batch * gh * gw, *crops.shape[1:]))
        crops = full.index_copy(0, index, crops)
    _, c, h, w = crops.shape
    x = crops.view(batch, gh, gw, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(batch, c, gh * h, gw * w)
