"""Tests for adapters/gpt4roi/roi_align.py (pure-PyTorch RoIAlign, torchvision semantics)."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from adapters.gpt4roi.roi_align import RoIAlign, roi_align

# The module object itself (a package __init__ re-exporting the function must not shadow it here).
roi_align_module = importlib.import_module("adapters.gpt4roi.roi_align")

# --------------------------------------------------------------------------------------
# Slow, obviously-correct reference: the torchvision / Detectron2 CPU kernel, in scalars.
# --------------------------------------------------------------------------------------


def _bilinear(img: list[list[float]], height: int, width: int, y: float, x: float) -> float:
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low = int(y)
    x_low = int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly = y - y_low
    lx = x - x_low
    hy = 1.0 - ly
    hx = 1.0 - lx
    return (
        hy * hx * img[y_low][x_low]
        + hy * lx * img[y_low][x_high]
        + ly * hx * img[y_high][x_low]
        + ly * lx * img[y_high][x_high]
    )


def _reference(
    feat: torch.Tensor, rois: torch.Tensor, out_h: int, out_w: int, scale: float, sampling: int, aligned: bool
) -> torch.Tensor:
    _, channels, height, width = feat.shape
    maps = feat.double().tolist()
    result = torch.zeros(rois.size(0), channels, out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        start_x = x1 * scale - offset
        start_y = y1 * scale - offset
        roi_w = x2 * scale - offset - start_x
        roi_h = y2 * scale - offset - start_y
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h = roi_h / out_h
        bin_w = roi_w / out_w
        grid_h = sampling if sampling > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling if sampling > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for c in range(channels):
            img = maps[int(b)][c]
            for ph in range(out_h):
                for pw in range(out_w):
                    total = 0.0
                    for iy in range(grid_h):
                        y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += _bilinear(img, height, width, y, x)
                    result[k, c, ph, pw] = total / count
    return result


def _random_rois(gen: torch.Generator, n_images: int, height: int, width: int, scale: float, k: int) -> torch.Tensor:
    """Boxes in image coordinates: inside, partly outside, fully outside, tiny and inverted ones."""
    img_h, img_w = height / scale, width / scale
    x1 = (torch.rand(k, generator=gen, dtype=torch.float64) * 1.5 - 0.25) * img_w
    y1 = (torch.rand(k, generator=gen, dtype=torch.float64) * 1.5 - 0.25) * img_h
    w = torch.rand(k, generator=gen, dtype=torch.float64) * img_w * 0.8
    h = torch.rand(k, generator=gen, dtype=torch.float64) * img_h * 0.8
    w[:2] = torch.rand(2, generator=gen, dtype=torch.float64) * 0.6 / scale  # tiny on the feature map
    h[1:3] = torch.rand(2, generator=gen, dtype=torch.float64) * 0.6 / scale
    w[3] = -0.2 / scale  # inverted (x2 < x1): degenerate, differs between aligned modes
    x1[4], y1[4] = -3.0 * img_w, 2.0 * img_h  # far outside
    b = torch.randint(0, n_images, (k,), generator=gen).double()
    return torch.stack([b, x1, y1, x1 + w, y1 + h], dim=1)


# --------------------------------------------------------------------------------------
# 1. Against the reference on random inputs.
# --------------------------------------------------------------------------------------

CASES = [
    # seed, (N, C, H, W), output_size, spatial_scale, sampling_ratio, aligned
    (0, (2, 3, 9, 13), (3, 4), 1.0, 2, True),
    (1, (2, 3, 9, 13), (3, 4), 1.0, 2, False),
    (2, (1, 2, 7, 5), 2, 1 / 8, 2, True),
    (3, (2, 2, 6, 11), (2, 3), 1 / 8, 0, True),
    (4, (2, 2, 6, 11), (2, 3), 1 / 8, 0, False),
    (5, (1, 2, 10, 10), 3, 0.5, -1, True),
    (6, (3, 2, 8, 6), (4, 2), 0.25, 3, True),
    (7, (1, 1, 1, 7), (1, 2), 1.0, 1, False),  # a single-row map
]


@pytest.mark.parametrize(("seed", "shape", "output_size", "scale", "sampling", "aligned"), CASES)
def test_matches_scalar_reference(seed, shape, output_size, scale, sampling, aligned):
    gen = torch.Generator().manual_seed(seed)
    n, _, height, width = shape
    feat = torch.randn(shape, generator=gen, dtype=torch.float64)
    rois = _random_rois(gen, n, height, width, scale, k=7)
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size

    got = roi_align(feat, rois, output_size, scale, sampling, aligned)
    want = _reference(feat, rois, out_h, out_w, scale, sampling, aligned)

    assert got.shape == (rois.size(0), shape[1], out_h, out_w)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got[4].abs().max() == 0  # the far-outside box
    assert want.abs().sum() > 1.0  # the comparison is not between two zero tensors


def test_float32_matches_reference_and_channels_last():
    gen = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 4, 12, 10, generator=gen, dtype=torch.float64)
    rois = _random_rois(gen, 2, 12, 10, 1 / 4, k=6)
    want = _reference(feat, rois, 5, 5, 1 / 4, 2, True)
    got32 = roi_align(feat.float(), rois.float(), 5, 1 / 4, 2, True)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), want, atol=1e-5, rtol=1e-5)
    got_cl = roi_align(feat.float().contiguous(memory_format=torch.channels_last), rois.float(), 5, 1 / 4, 2, True)
    torch.testing.assert_close(got_cl, got32, atol=0, rtol=0)
    assert got_cl.is_contiguous()


def test_gather_fallback_matches_embedding_bag(monkeypatch):
    gen = torch.Generator().manual_seed(12)
    feat = torch.randn(2, 3, 8, 9, generator=gen, dtype=torch.float64)
    rois = _random_rois(gen, 2, 8, 9, 1.0, k=6)
    fast = roi_align(feat, rois, 3, 1.0, 2, True)
    monkeypatch.setattr(roi_align_module, "_EMBEDDING_BAG_DEVICES", frozenset())
    slow = roi_align(feat, rois, 3, 1.0, 2, True)
    torch.testing.assert_close(slow, fast, atol=1e-12, rtol=0)
    torch.testing.assert_close(slow, _reference(feat, rois, 3, 3, 1.0, 2, True), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------
# 2. Hand-computed values.
# --------------------------------------------------------------------------------------


def _ramp_x(height: int, width: int, offset: float = 0.0) -> torch.Tensor:
    """f(x, y) = x + offset, shape [1, 1, H, W]."""
    return (torch.arange(width, dtype=torch.float64) + offset).expand(height, width).reshape(1, 1, height, width)


def test_constant_map_gives_the_constant():
    feat = torch.full((1, 2, 6, 8), 7.0, dtype=torch.float64)
    feat[:, 1] = -3.0
    rois = torch.tensor(
        [[0, 0.0, 0.0, 8.0, 6.0], [0, 1.3, 0.2, 5.7, 4.9], [0, 2.0, 2.0, 2.1, 2.05]], dtype=torch.float64
    )
    for sampling in (2, 0):
        out = roi_align(feat, rois, (3, 4), 1.0, sampling, aligned=True)
        torch.testing.assert_close(out[:, 0], torch.full((3, 3, 4), 7.0, dtype=torch.float64))
        torch.testing.assert_close(out[:, 1], torch.full((3, 3, 4), -3.0, dtype=torch.float64))


def test_linear_ramp_gives_bin_centres():
    # f(x, y) = x on a 6 x 10 map. Box (2, 1, 6, 5) with aligned=True starts at x = 1.5 and is 4 wide;
    # 2 bins of width 2, samples at 2.0, 3.0 | 4.0, 5.0, so the bins read their centres 2.5 and 4.5.
    feat = _ramp_x(6, 10)
    expected = torch.tensor([[[[2.5, 4.5], [2.5, 4.5]]]], dtype=torch.float64)
    out = roi_align(feat, torch.tensor([[0, 2.0, 1.0, 6.0, 5.0]], dtype=torch.float64), 2, 1.0, 2, aligned=True)
    torch.testing.assert_close(out, expected)
    # Same box in image coordinates at stride 2 (spatial_scale 1/2), and the adaptive grid (ceil(4/2) = 2).
    out = roi_align(feat, torch.tensor([[0, 4.0, 2.0, 12.0, 10.0]], dtype=torch.float64), 2, 0.5, 0, aligned=True)
    torch.testing.assert_close(out, expected)
    # The transposed map f(x, y) = y: bin centres along y are 1.5 and 3.5 (start 0.5, bins of 2).
    out = roi_align(feat.transpose(2, 3), torch.tensor([[0, 1.0, 2.0, 5.0, 6.0]], dtype=torch.float64), 2, 1.0, 2, True)
    torch.testing.assert_close(out, torch.tensor([[[[2.5, 2.5], [4.5, 4.5]]]], dtype=torch.float64))
    # aligned=False: box (2, 1, 6, 5) starts at x = 2, bins centred at 3 and 5.
    out = roi_align(feat, torch.tensor([[0, 2.0, 1.0, 6.0, 5.0]], dtype=torch.float64), 2, 1.0, 2, aligned=False)
    torch.testing.assert_close(out, torch.tensor([[[[3.0, 5.0], [3.0, 5.0]]]], dtype=torch.float64))


def test_edge_rules_by_hand():
    # f(x, y) = x + 10 on a 4 x 4 map; the boxes span rows 1..3 (all rows inside), one output bin, 2 x 2 samples.
    feat = _ramp_x(4, 4, offset=10.0)

    def one(x1: float, x2: float) -> float:
        rois = torch.tensor([[0, x1, 1.0, x2, 3.0]], dtype=torch.float64)
        return roi_align(feat, rois, 1, 1.0, 2, aligned=True).item()

    # x1=2, x2=5: start 1.5, width 3, samples x = 2.25 and 3.75; 3.75 >= W-1 reads column 3 -> (12.25 + 13) / 2.
    assert one(2.0, 5.0) == pytest.approx(12.625, abs=1e-12)
    # x1=3, x2=5: samples 3.0 and 4.0; x == W is still inside (not > W) and reads column 3 -> (13 + 13) / 2.
    assert one(3.0, 5.0) == pytest.approx(13.0, abs=1e-12)
    # x1=2, x2=6: samples 2.5 and 4.5; 4.5 > W contributes 0 but still counts -> (12.5 + 0) / 2.
    assert one(2.0, 6.0) == pytest.approx(6.25, abs=1e-12)
    # x1=-1, x2=1: samples -1.0 (not < -1, clamped to 0) and 0.0 -> (10 + 10) / 2.
    assert one(-1.0, 1.0) == pytest.approx(10.0, abs=1e-12)
    # x1=-2, x2=0: samples -2.0 (< -1: contributes 0) and -1.0 (clamped to 0) -> (0 + 10) / 2.
    assert one(-2.0, 0.0) == pytest.approx(5.0, abs=1e-12)


def test_box_fully_outside_and_degenerate_boxes_give_zeros():
    feat = torch.randn(1, 3, 5, 5, dtype=torch.float64) + 5.0
    rois = torch.tensor(
        [[0, 20.0, 20.0, 30.0, 30.0], [0, -30.0, -30.0, -10.0, -10.0], [0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64
    )
    for sampling in (2, 0):
        out = roi_align(feat, rois[:2], 3, 1.0, sampling, aligned=True)
        assert out.shape == (2, 3, 3, 3)
        assert torch.equal(out, torch.zeros_like(out))
    # A zero-size box: aligned=True adaptive has an empty grid -> 0; aligned=False widens it to 1 pixel, samples
    # at 1.25 and 1.75 on each axis weight rows (and columns) 1 and 2 by (0.75 + 0.25) / 2 = 0.5 each: the 2x2 mean.
    zero_box = rois[2:]
    assert torch.equal(roi_align(feat, zero_box, 1, 1.0, 0, aligned=True), torch.zeros(1, 3, 1, 1, dtype=torch.float64))
    legacy = roi_align(feat, zero_box, 1, 1.0, 2, aligned=False)
    expected = feat[0, :, 1:3, 1:3].mean((1, 2))
    torch.testing.assert_close(legacy.view(3), expected)


# --------------------------------------------------------------------------------------
# 3. Gradients.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "aligned"), [(2, True), (0, True), (0, False)])
def test_gradcheck(sampling, aligned):
    gen = torch.Generator().manual_seed(21)
    feat = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.5, 0.7, 4.2, 3.9], [1, -1.0, 2.0, 3.0, 7.0], [1, 3.3, 0.1, 9.0, 2.2], [0, 2.0, 2.0, 2.0, 2.0]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, (2, 3), 1.0, sampling, aligned), (feat,))


def test_gradient_values_are_the_bilinear_weights():
    # One box, one bin, one sample at (y, x) = (1.25, 2.5) (aligned=False box (2, 0.75, 3, 1.75), sampling 1):
    # d out / d feat is the bilinear weight table.
    feat = torch.zeros(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    out = roi_align(feat, torch.tensor([[0, 2.0, 0.75, 3.0, 1.75]], dtype=torch.float64), 1, 1.0, 1, aligned=False)
    out.sum().backward()
    expected = torch.zeros(4, 5, dtype=torch.float64)
    expected[1, 2], expected[1, 3], expected[2, 2], expected[2, 3] = 0.375, 0.375, 0.125, 0.125
    torch.testing.assert_close(feat.grad[0, 0], expected)


def test_all_zero_outputs_still_backpropagate():
    feat = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    far = torch.tensor([[0, 50.0, 50.0, 60.0, 60.0]], dtype=torch.float64)
    for sampling, boxes in ((2, far), (0, far), (2, far[:0])):
        feat.grad = None
        out = roi_align(feat, boxes, 2, 1.0, sampling, aligned=True)
        assert out.requires_grad
        out.sum().backward()
        assert torch.equal(feat.grad, torch.zeros_like(feat))


# --------------------------------------------------------------------------------------
# 4. Box formats and the module wrapper.
# --------------------------------------------------------------------------------------


def test_list_of_boxes_equals_k5_tensor():
    gen = torch.Generator().manual_seed(31)
    feat = torch.randn(3, 2, 8, 8, generator=gen)
    per_image = [torch.rand(2, 4, generator=gen) * 60, torch.zeros(0, 4), torch.rand(3, 4, generator=gen) * 60]
    per_image = [torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1) for b in per_image]  # x2 >= x1, y2 >= y1
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], dim=1) for i, b in enumerate(per_image)])
    assert rois[:, 0].tolist() == [0, 0, 2, 2, 2]
    for sampling in (2, 0):
        from_list = roi_align(feat, per_image, 4, 1 / 8, sampling, aligned=True)
        from_tensor = roi_align(feat, rois, 4, 1 / 8, sampling, aligned=True)
        assert from_list.shape == (5, 2, 4, 4)
        assert torch.equal(from_list, from_tensor)
        assert from_tensor.abs().sum() > 0


def test_module_wrapper_and_shapes():
    feat = torch.randn(1, 4, 16, 16)
    boxes = [torch.tensor([[8.0, 8.0, 100.0, 64.0]])]
    module = RoIAlign((14, 14), spatial_scale=1 / 8, sampling_ratio=2, aligned=True)
    assert "sampling_ratio=2" in repr(module) and "aligned=True" in repr(module)
    torch.testing.assert_close(module(feat, boxes), roi_align(feat, boxes, 14, 1 / 8, 2, True), atol=0, rtol=0)
    assert roi_align(feat, torch.zeros(0, 5), 7, 1.0, 2, True).shape == (0, 4, 7, 7)
    with pytest.raises(ValueError):
        roi_align(feat, torch.zeros(3, 4), 7)
    with pytest.raises(ValueError):
        roi_align(feat[0], boxes, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(41)
    feat = torch.randn(2, 8, 16, 12, generator=gen)
    rois = _random_rois(gen, 2, 16, 12, 1 / 8, k=8).float()
    for sampling in (2, 0):
        cpu = roi_align(feat, rois, 7, 1 / 8, sampling, aligned=True)
        gpu = roi_align(feat.cuda(), rois.cuda(), 7, 1 / 8, sampling, aligned=True)
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------
# 5. torchvision itself, when it is installed (it is not a dependency).
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "aligned"), [(2, True), (0, True), (2, False), (0, False)])
def test_matches_torchvision(sampling, aligned):
    tv_ops = pytest.importorskip("torchvision.ops")
    gen = torch.Generator().manual_seed(51)
    feat = torch.randn(2, 5, 17, 23, generator=gen, requires_grad=True)
    rois = _random_rois(gen, 2, 17, 23, 1 / 8, k=9).float()
    ours = roi_align(feat, rois, (7, 5), 1 / 8, sampling, aligned)
    theirs = tv_ops.roi_align(feat, rois, (7, 5), 1 / 8, sampling, aligned)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(ours.shape, generator=gen)
    (g_ours,) = torch.autograd.grad(ours, feat, grad_out)
    (g_theirs,) = torch.autograd.grad(theirs, feat, grad_out)
    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=1e-5)
    list_form = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    torch.testing.assert_close(
        roi_align(feat, list_form, 7, 1 / 8, sampling, aligned),
        tv_ops.roi_align(feat, list_form, 7, 1 / 8, sampling, aligned),
        atol=1e-5,
        rtol=1e-5,
    )
