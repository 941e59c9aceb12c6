"""RoIAlign in plain PyTorch, for the GPT4RoI reference model.

Why this file exists: GPT4RoI's region extractor pools every box from its
multi-level feature maps with RoIAlign (``aligned=True``, ``sampling_ratio=2``,
14x14 output), which upstream takes from mmcv. This project accepts neither mmcv
nor torchvision as a dependency, so the op is written here with ordinary tensor
ops: it runs on any device and dtype that PyTorch supports and autograd gives
gradients with respect to the feature map.

Semantics are those of ``torchvision.ops.roi_align`` (the Detectron2 kernel),
average pooling, including its edge rules:

* each box is scaled by ``spatial_scale``; with ``aligned=True`` it is then shifted
  by -0.5 (pixel centres), with ``aligned=False`` its width and height are raised
  to at least 1;
* each of the ``out_h x out_w`` bins averages a ``grid_h x grid_w`` grid of sample
  points, ``grid = sampling_ratio`` if it is positive, otherwise
  ``ceil(roi_size / out_size)`` per box (adaptive);
* a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` contributes 0 but still
  counts in the average; coordinates ``<= 0`` are clamped to 0; a sample at or
  beyond the last row (column) reads that row (column) only.

How: sampling is separable, so for every bin the (up to) ``4 * grid_h * grid_w``
pixels it reads and their bilinear weights are built from per-axis tables (small
integer/weight tensors, independent of the channel count). The weighted sums are
then one ``F.embedding_bag(mode="sum", per_sample_weights=...)`` over the
channels-last feature map: no ``[K, C, samples]`` intermediate and no dense
``[K, H, W, out_h, out_w]`` weight tensor is materialised, and the backward pass is
a scatter-add into a tensor the size of the input. On devices other than CPU/CUDA
a gather-and-sum fallback is used (it materialises ``[K*out_h*out_w, bag, C]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RoIAlign", "roi_align"]

_EMBEDDING_BAG_DEVICES = frozenset({"cpu", "cuda"})


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _to_rois(boxes: Tensor | Sequence[Tensor], like: Tensor, dtype: torch.dtype) -> Tensor:
    """``[K, 5]`` (batch_index, x1, y1, x2, y2) in ``dtype`` on ``like.device``, detached."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.size(1) != 5:
            raise ValueError(f"boxes tensor must have shape [K, 5], got {tuple(boxes.shape)}")
        return boxes.detach().to(device=like.device, dtype=dtype)
    parts = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.size(1) != 4:
            raise ValueError(f"boxes[{i}] must have shape [K_i, 4], got {tuple(b.shape)}")
        b = b.detach().to(device=like.device, dtype=dtype)
        parts.append(torch.cat([b.new_full((b.size(0), 1), float(i)), b], dim=1))
    if not parts:
        return like.new_zeros((0, 5), dtype=dtype)
    return torch.cat(parts, dim=0)


def _zero_like_graph(t: Tensor) -> Tensor:
    """An exact scalar 0 that depends on ``t`` in autograd (so outputs of all-zero cases still require grad)."""
    return t.narrow(0, 0, 0).sum()


def _axis_taps(coord: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps along one axis, torchvision's rule.

    ``coord``: sample coordinates of any shape. Returns ``(index, weight)`` with a trailing
    dimension of 2 (low, high); samples outside ``[-1, size]`` get weight 0 (index 0).
    """
    valid = (coord >= -1.0) & (coord <= size)
    c = torch.where(valid, coord, torch.zeros_like(coord)).clamp(min=0)
    low = c.floor().long()  # c >= 0, so floor == the kernel's (int) truncation
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    c = torch.where(edge, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    keep = valid.to(c.dtype)
    return torch.stack([low, high], dim=-1), torch.stack([(1.0 - frac) * keep, frac * keep], dim=-1)


def _sample_coords(start: Tensor, bin_size: Tensor, out: int, grid: int) -> Tensor:
    """Sample positions ``[K, out, grid]`` along one axis, in the kernel's evaluation order:
    ``start + p * bin + (i + .5) * bin / grid``."""
    p = torch.arange(out, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(grid, device=start.device, dtype=start.dtype)[None, None, :]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    return start + p * bin_size + (i + 0.5) * bin_size / grid


def _weighted_bag_sum(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """``out[b] = sum_j weight[b, j] * table[index[b, j]]`` for ``table`` [M, C], index/weight [B, J]."""
    if table.device.type in _EMBEDDING_BAG_DEVICES:
        return F.embedding_bag(index, table, mode="sum", per_sample_weights=weight)
    return (table[index] * weight.unsqueeze(-1)).sum(dim=1)


def _pool_fixed_grid(
    table: Tensor,
    rois: Tensor,
    height: int,
    width: int,
    out_h: int,
    out_w: int,
    grid_h: int,
    grid_w: int,
    spatial_scale: float,
    aligned: bool,
) -> Tensor:
    """RoIAlign of ``rois`` [K, 5] that all use the same ``grid_h x grid_w`` sampling grid.

    ``table`` is the feature map as ``[N*H*W, C]`` (channels last). Returns ``[K, out_h, out_w, C]``.
    """
    k = rois.size(0)
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].long()
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    x2 = rois[:, 3] * spatial_scale - offset
    y2 = rois[:, 4] * spatial_scale - offset
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    ys = _sample_coords(y1, roi_h / out_h, out_h, grid_h)  # [K, out_h, grid_h]
    xs = _sample_coords(x1, roi_w / out_w, out_w, grid_w)  # [K, out_w, grid_w]
    iy, wy = _axis_taps(ys, height)  # [K, out_h, grid_h, 2]
    ix, wx = _axis_taps(xs, width)  # [K, out_w, grid_w, 2]

    # Broadcast to [K, out_h, out_w, grid_h, 2, grid_w, 2]: one bag of 4*grid_h*grid_w taps per bin.
    iy = iy[:, :, None, :, :, None, None]
    wy = wy[:, :, None, :, :, None, None]
    ix = ix[:, None, :, None, None, :, :]
    wx = wx[:, None, :, None, None, :, :]
    index = (batch[:, None, None, None, None, None, None] * height + iy) * width + ix
    weight = (wy * wx).to(table.dtype)
    bags = k * out_h * out_w
    taps = 4 * grid_h * grid_w
    pooled = _weighted_bag_sum(table, index.reshape(bags, taps), weight.reshape(bags, taps))
    return (pooled / (grid_h * grid_w)).view(k, out_h, out_w, -1)


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (average), same semantics and signature as ``torchvision.ops.roi_align``.

    Args:
        input: feature map ``[N, C, H, W]`` (floating point, any device).
        boxes: ``[K, 5]`` tensor of ``(batch_index, x1, y1, x2, y2)``, or a list of ``N``
            tensors ``[K_i, 4]`` of ``(x1, y1, x2, y2)`` for image ``i``. Coordinates are in
            input-image pixels; they are multiplied by ``spatial_scale``. Batch indices are
            not range-checked. No gradient flows to the boxes.
        output_size: ``out`` or ``(out_h, out_w)``.
        spatial_scale: feature-map size / image size (e.g. ``1/8``).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi_size / out_size)`` per box.
        aligned: shift boxes by -0.5 pixel after scaling (``True`` is the correct
            pixel model, as in GPT4RoI); ``False`` keeps the legacy behaviour.

    Returns:
        ``[K, C, out_h, out_w]`` in ``input.dtype``, contiguous.
    """
    if input.dim() != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be floating point, got {input.dtype}")
    out_h, out_w = _pair(output_size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"output_size must be positive, got {(out_h, out_w)}")
    n, c, height, width = input.shape
    # Coordinates in the input's precision (as the kernel does), but never below fp32.
    coord_dtype = input.dtype if input.dtype == torch.float64 else torch.float32
    rois = _to_rois(boxes, input, coord_dtype)
    k = rois.size(0)
    if k == 0 or c == 0 or height == 0 or width == 0:
        return input.new_zeros((k, c, out_h, out_w)) + _zero_like_graph(input)

    # Channels last: row b*H*W + y*W + x of `table` is the C-vector at (b, y, x).
    # A view when `input` is already channels_last, else one copy of the input.
    table = input.permute(0, 2, 3, 1).reshape(n * height * width, c)

    if sampling_ratio > 0:
        pooled = _pool_fixed_grid(
            table, rois, height, width, out_h, out_w, sampling_ratio, sampling_ratio, spatial_scale, aligned
        )
    else:
        pooled = _pool_adaptive(table, rois, height, width, out_h, out_w, spatial_scale, aligned)
    return pooled.permute(0, 3, 1, 2).contiguous()


def _pool_adaptive(
    table: Tensor,
    rois: Tensor,
    height: int,
    width: int,
    out_h: int,
    out_w: int,
    spatial_scale: float,
    aligned: bool,
) -> Tensor:
    """``sampling_ratio <= 0``: the grid is ``ceil(roi_size / out_size)`` per box.

    Boxes are grouped by their ``(grid_h, grid_w)`` and each group is pooled in one
    vectorised call; boxes whose grid is empty (degenerate boxes with ``aligned=True``)
    give zeros, as in the kernel.
    """
    offset = 0.5 if aligned else 0.0
    scaled = rois[:, 1:] * spatial_scale - offset
    roi_w = scaled[:, 2] - scaled[:, 0]
    roi_h = scaled[:, 3] - scaled[:, 1]
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    grid_h = torch.ceil(roi_h / out_h).long()
    grid_w = torch.ceil(roi_w / out_w).long()
    grids = torch.stack([grid_h, grid_w], dim=1).cpu().tolist()  # one host sync

    groups: dict[tuple[int, int], list[int]] = {}
    for i, (gh, gw) in enumerate(grids):
        if gh > 0 and gw > 0:
            groups.setdefault((gh, gw), []).append(i)

    order: list[int] = []
    parts: list[Tensor] = []
    empty = [i for i, (gh, gw) in enumerate(grids) if gh <= 0 or gw <= 0]
    if empty:
        order += empty
        parts.append(table.new_zeros((len(empty), out_h, out_w, table.size(1))) + _zero_like_graph(table))
    for (gh, gw), members in groups.items():
        sel = torch.tensor(members, device=rois.device, dtype=torch.long)
        order += members
        parts.append(_pool_fixed_grid(table, rois[sel], height, width, out_h, out_w, gh, gw, spatial_scale, aligned))
    pooled = torch.cat(parts, dim=0)
    if order == sorted(order):
        return pooled
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return pooled[inverse.to(pooled.device)]


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (like ``torchvision.ops.RoIAlign``)."""

    def __init__(
        self,
        output_size: int | Sequence[int],
        spatial_scale: float = 1.0,
        sampling_ratio: int = -1,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input: Tensor, rois: Tensor | Sequence[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
