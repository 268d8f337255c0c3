"""Multi-column FCNs of Wu et al. (2017): fusion (Fig. 3), sparse coarse-to-fine and fast inference (Sec. 3.2–3.4).

Columns are separate networks (their own weights: Table 4 removes different units from each) fed with the
input resized by their scale. Fusion of the column score maps, all on the 1/4-resolution grid of the input:

- ``max`` / ``sum`` — element-wise over the columns (any subset of 0.25, 0.5, 1, 2; Table 2);
- ``attention`` — attention-to-scale [4]: a 1×1 layer on the features of both columns (0.5 and 1) gives two
  scale-aware weights, softmax across the columns, weighted sum;
- ``ctf`` — coarse-to-fine: the same weights ``z1, z2`` from the half-resolution column only;
- ``sctf`` — plus the sparse weight map ``s`` (``sparsity``), up-sampled and multiplied into ``z2``:
  ``z1·L_half + (s·z2)·L_full``;
- ``isctf`` — plus crop training with uncrop and the cross-column connections (a 3×3 layer from each of the
  half column's features at image strides 32, 16, 8 into the full column's merge at the same stride).

Sparse weight: training uses ``sigmoid(s)`` (``kl``, with the penalty) or ``sigmoid(s)`` on the top-k regions
only (``wta``). At evaluation both quantize ``s`` into a mask of the top ``k = ⌊p·H·W⌋`` regions per image
(Sec. 4.4) and use ``sigmoid(s)·mask``.

Full-resolution column per region (Sec. 3.4, Fig. 4): the backbone runs on each region crop as its own sample;
its raw features are "uncropped" and the whole head (top, in-column jump layers, hidden layers, cross-column
inputs, classifier) runs on the re-assembled map. ISCTF does this in training and in classic inference (every
region computed, the features of the regions outside the mask zeroed) and fast inference computes only the
masked-in crops, batched, pasting them into zeros — so the two give the same output. SCTF trains and runs
classic inference on the whole image and crops only in fast inference, hence its "boundary problem" (Table 3).
Inputs are zero-padded to a multiple of the region grid (and of 64, so the half column aligns) and the logits
cropped back. Regions scale with the input (``region_size`` holds at an input ``region_reference`` high; see
``sparsity.region_pixels``), so the grid — and with it what ``p`` means — is the paper's at the proxy
scale too (4×8 for 256-pixel regions at 256×512 as at 1024×2048); the sparse weight's τ×τ kernel is resampled to
the smaller regions (``SparseWeight``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.builders.layers import SegOutput, upsample_to
from archsearch.builders.wu2017.column import Column
from archsearch.builders.wu2017.knobs import PAIRED, SPARSE, TwoColumnKnobs
from archsearch.builders.wu2017.sparsity import (
    SparseWeight,
    SparsityPenalty,
    crop_regions,
    region_pixels,
    regions_to_keep,
    top_regions,
    uncrop_regions,
)


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The input of a column at ``scale`` (bilinear; anti-aliased when shrinking)."""
    if scale == 1.0:
        return x
    size = (round(int(x.shape[-2]) * scale), round(int(x.shape[-1]) * scale))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


class TwoColumnFCN(nn.Module):
    """Columns at several input scales fused into one score map (Table 2), optionally spatially sparse."""

    def __init__(self, k: TwoColumnKnobs, num_classes: int) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in k.columns)
        self.fusion = k.fusion
        self.inference = k.inference
        self.region = k.region_size
        self.region_reference = k.region_reference
        self.p = k.p
        self.sparsity = k.sparsity
        self.aux_weight = k.aux_weight
        self.paired = k.fusion in PAIRED
        self.sparse = k.fusion in SPARSE
        cols: list[Column] = []
        half_dims: dict[int, int] = {}
        for scale in self.scales:
            is_full = scale >= 1.0
            cross = None
            if k.fusion == "isctf" and is_full:
                cross = {32: half_dims[16], 16: half_dims[8], 8: half_dims[4]}
            col = Column(
                k.units_full if is_full else k.units_half,
                num_classes,
                optimized=k.optimized_head,
                top_kernel=1 if (k.optimized_head and is_full) else 3,
                stride_in_1x1=k.stride_in_1x1,
                cross=cross,
                stem=k.stem,
            )
            if not is_full:
                half_dims = col.feature_dims()
            cols.append(col)
        self.columns = nn.ModuleList(cols)
        if self.paired:
            half_ch, full_ch = cols[0].feature_channels, cols[1].feature_channels
            self.scale_weights = nn.Conv2d(half_ch + (full_ch if k.fusion == "attention" else 0), 2, 1)
        if self.sparse:
            self.sparse_weight = SparseWeight(cols[0].feature_channels, k.region_size // 8)
            self.penalty: SparsityPenalty | None = None
            if k.sparsity == "kl":
                self.penalty = SparsityPenalty(k.p, k.lam, k.alpha, k.estimate)

    def region_pixels(self, height: int) -> int:
        """Side of the regions at an input ``height`` (the paper's grid at every resolution)."""
        return region_pixels(self.region, self.region_reference, height)

    # -- helpers -------------------------------------------------------------------------------------------
    def _encode_full(
        self, x: torch.Tensor, mask: torch.Tensor | None, grid: tuple[int, int], region: int
    ) -> dict[str, torch.Tensor]:
        full: Column = self.columns[1]  # type: ignore[assignment]
        fast = not self.training and self.inference == "fast"
        if not (self.fusion == "isctf" or fast):
            return full.encode(x)
        n = x.shape[0]
        crops = crop_regions(x, region)
        if fast:
            assert mask is not None
            index = mask.reshape(-1).nonzero().squeeze(1)
            enc = full.encode(crops.index_select(0, index))
            return {key: uncrop_regions(v, n, grid, index) for key, v in enc.items()}
        enc = full.encode(crops)
        if mask is not None:
            keep = mask.reshape(-1, 1, 1, 1).to(crops.dtype)
            enc = {key: v * keep for key, v in enc.items()}
        return {key: uncrop_regions(v, n, grid) for key, v in enc.items()}

    def _multi(self, x: torch.Tensor, out_hw: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = [upsample_to(col(resize(x, s))[0], out_hw) for s, col in zip(self.scales, self.columns, strict=True)]
        if self.fusion == "max":
            fused = torch.stack(logits).amax(dim=0) if len(logits) > 1 else logits[0]
        else:
            fused = torch.stack(logits).sum(dim=0) if len(logits) > 1 else logits[0]
        return fused, logits

    def _paired(
        self, x: torch.Tensor, out_hw: tuple[int, int], mask: torch.Tensor | None, region: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        half: Column = self.columns[0]  # type: ignore[assignment]
        full: Column = self.columns[1]  # type: ignore[assignment]
        half_logits, hf = half(resize(x, 0.5))
        half_logits = upsample_to(half_logits, out_hw)
        penalty = None
        if not self.sparse:
            full_logits, ff = full(x)
            source = hf[4]
            if self.fusion == "attention":
                source = torch.cat([upsample_to(hf[4], ff[4].shape[-2:]), ff[4]], dim=1)
            z = torch.softmax(upsample_to(self.scale_weights(source), out_hw), dim=1)
            return z[:, :1] * half_logits + z[:, 1:] * full_logits, [half_logits, full_logits], None
        s = self.sparse_weight(hf[4], region // 8)  # (N, H, W): one logit per region
        grid = (int(s.shape[1]), int(s.shape[2]))
        k = regions_to_keep(self.p, grid[0] * grid[1])
        if self.training:
            weight = torch.sigmoid(s)
            if self.sparsity == "wta":
                weight = weight * top_regions(s.detach(), k)
            elif self.penalty is not None:
                penalty = self.penalty(s)
            region_mask = None
        else:
            region_mask = mask if mask is not None else top_regions(s, k)
            weight = torch.sigmoid(s) * region_mask
        cross = {32: hf[16], 16: hf[8], 8: hf[4]} if self.fusion == "isctf" else None
        full_logits, _ = full.decode(self._encode_full(x, region_mask, grid, region), cross)
        z = torch.softmax(upsample_to(self.scale_weights(hf[4]), out_hw), dim=1)
        w = F.interpolate(weight[:, None], size=out_hw, mode="nearest")
        fused = z[:, :1] * half_logits + z[:, 1:] * w * full_logits
        return fused, [half_logits, full_logits], penalty

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | SegOutput:
        """Logits at 1/4 of the input (eval); :class:`SegOutput` with per-column aux logits and penalty (train).

        ``mask`` (``(N, H, W)`` booleans over the region grid) replaces the top-k selection at evaluation.
        """
        h, w = int(images.shape[-2]), int(images.shape[-1])
        region = self.region_pixels(h)
        a = math.lcm(region, 64) if self.sparse else 64
        x = F.pad(images, (0, -w % a, 0, -h % a))
        out_hw = (int(x.shape[-2]) // 4, int(x.shape[-1]) // 4)
        keep_hw = (math.ceil(h / 4), math.ceil(w / 4))
        penalty = None
        if self.paired:
            fused, logits, penalty = self._paired(x, out_hw, mask, region)
        else:
            fused, logits = self._multi(x, out_hw)
        fused = fused[..., : keep_hw[0], : keep_hw[1]]
        if not self.training:
            return fused
        aux = [(self.aux_weight, lg[..., : keep_hw[0], : keep_hw[1]]) for lg in logits] if len(logits) > 1 else []
        return SegOutput(fused, aux, penalty)
