"""Zero-cost scores on tiny networks whose values can be worked out by hand, determinism, and isolation."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from archsearch.training import zerocost as zc
from archsearch.training.train import segmentation_loss


def _linear(weight, bias=None):
    layer = nn.Linear(len(weight[0]), len(weight), bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


class _TwoRelus(nn.Module):
    """Identity linear layer, nn.ReLU, then a functional ReLU of the negated input: both calls are patterns."""

    def __init__(self):
        super().__init__()
        self.fc = _linear([[1.0, 0.0], [0.0, 1.0]])
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return torch.cat([self.relu(self.fc(x)), F.relu(-x)], dim=1)


def test_naswot_is_log_det_of_the_pattern_agreements():
    # one ReLU of 2 units: codes [1, 1] and [1, 0] agree on 1 unit → K = [[2, 1], [1, 2]], |K| = 3
    model = nn.Sequential(_linear([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU())
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    assert zc.naswot(model, x) == pytest.approx(math.log(3))
    # two ReLU calls (module and functional): codes [1,1 | 0,0], [1,0 | 0,1], [0,0 | 1,1] → K sums over 4 units
    x3 = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    codes = np.array([[1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1]])
    k = codes @ codes.T + (1 - codes) @ (1 - codes).T  # [[4, 2, 0], [2, 4, 2], [0, 2, 4]]
    assert zc.naswot(_TwoRelus(), x3) == pytest.approx(math.log(np.linalg.det(k)))  # 32
    with pytest.raises(ValueError, match="no ReLU"):
        zc.naswot(nn.Sequential(_linear([[1.0, 0.0]])), x)
    with pytest.raises(ValueError, match="singular"):  # two images with one pattern: K = [[2, 2], [2, 2]]
        zc.naswot(model, torch.tensor([[1.0, 1.0], [2.0, 3.0]]))


def _pixel_classifier(weight, bias=None):
    """A 1×1 convolution from 3 channels to classes: a per-pixel linear classifier (logits at full size)."""
    conv = nn.Conv2d(3, len(weight), 1, bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight, dtype=torch.float32)[:, :, None, None])
        if bias is not None:
            conv.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return conv


def test_grad_norm_by_hand():
    # W = 0: softmax is uniform over 2 classes; one labelled pixel x = (1, 2, 3) of class 0:
    # ∂CE/∂W = (p − onehot) xᵀ = [[-0.5], [0.5]] (1, 2, 3) → ‖·‖ = sqrt(2 · 0.25 · 14) = sqrt(7)
    model = _pixel_classifier([[0.0] * 3, [0.0] * 3])
    x = torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]
    y = torch.zeros(1, 1, 1, dtype=torch.long)
    assert zc.grad_norm(model, x, y, 255) == pytest.approx(math.sqrt(7))
    # the same image twice: the mean over labelled pixels gives the same gradient
    assert zc.grad_norm(model, x.repeat(2, 1, 1, 1), y.repeat(2, 1, 1), 255) == pytest.approx(math.sqrt(7))


def test_snip_is_sum_of_abs_gradient_times_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 1))
    x = torch.randn(2, 3, 6, 6)
    y = torch.randint(0, 5, (2, 6, 6))
    y[0, 0, 0] = 255  # an ignored pixel
    expected = 0.0
    loss = segmentation_loss(model(x), y, 255)
    loss.backward()
    for m in model:
        if isinstance(m, nn.Conv2d):  # weights only, not biases
            expected += float((m.weight.grad * m.weight.detach()).abs().sum())
    model.zero_grad()
    assert zc.snip(model, x, y, 255) == pytest.approx(expected, rel=1e-6)
    # by hand for the pixel classifier: W = [[1, 0, 0], [0, 0, 0]], x = (1, 2, 3), class 1:
    # logits (1, 0), p = (e/(e+1), 1/(e+1)); ∂/∂W = (p − e₁) xᵀ; only W[0,0] is non-zero: |p₀ · 1 · 1|
    clf = _pixel_classifier([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    xx = torch.tensor([1.0, 2.0, 3.0])[None, :, None, None]
    p0 = math.e / (math.e + 1)
    assert zc.snip(clf, xx, torch.ones(1, 1, 1, dtype=torch.long), 255) == pytest.approx(p0)


def test_synflow_of_a_two_layer_linear_net():
    # R = |w2| · Σ|w1| · 1 = 0.5 · 6 = 3, homogeneous of degree 1 in each layer's weights: Σ_w ∂R/∂w · w = R per
    # layer, 2R = 6 in all; signs do not matter (|θ|)
    model = nn.Sequential(_linear([[1.0, -2.0, 3.0]]), _linear([[-0.5]]))
    assert zc.synflow(model, (1, 3)) == pytest.approx(6.0)
    # three layers with widths: R = 1ᵀ|W3||W2||W1|1 and the sum is 3R
    torch.manual_seed(1)
    w1, w2, w3 = torch.randn(4, 3), torch.randn(5, 4), torch.randn(2, 5)
    deep = nn.Sequential(_linear(w1.tolist()), nn.ReLU(), _linear(w2.tolist()), _linear(w3.tolist()))
    w1, w2, w3 = w1.double(), w2.double(), w3.double()
    r = float(torch.ones(2).double() @ w3.abs() @ w2.abs() @ w1.abs() @ torch.ones(3).double())
    assert zc.synflow(deep, (1, 3)) == pytest.approx(3 * r, rel=1e-9)


def test_jacob_cov_of_identical_jacobians():
    # a linear per-pixel map: every image has the same Jacobian → correlations all 1 → eigenvalues (n, 0, …, 0)
    model = _pixel_classifier([[1.0, 2.0, -1.0], [0.5, 0.0, 1.0]])
    torch.manual_seed(0)
    n, k = 3, 1e-5
    x = torch.randn(n, 3, 2, 2)
    expected = -((math.log(n + k) + 1 / (n + k)) + (n - 1) * (math.log(k) + 1 / k))
    assert zc.jacob_cov(model, x) == pytest.approx(expected, rel=1e-3)


def test_zico_against_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    x = torch.randn(6, 3, 5, 5)
    y = torch.randint(0, 3, (6, 5, 5))
    per_batch = []
    for i in range(0, 6, 2):
        model.zero_grad()
        segmentation_loss(model(x[i : i + 2]), y[i : i + 2], 255).backward()
        per_batch.append([model[0].weight.grad.clone().double(), model[2].weight.grad.clone().double()])
    expected = 0.0
    for layer in range(2):
        g = torch.stack([b[layer] for b in per_batch])  # (3 mini-batches, …)
        expected += math.log(float((g.abs().mean(0) / g.std(0)).sum()))
    model.zero_grad()
    assert zc.zico(model, x, y, 255) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least 4 images"):
        zc.zico(model, x[:3], y[:3], 255)


class _Images(torch.utils.data.Dataset):
    class info:  # the data set's info, as archsearch.data's
        ignore_index = 255

    def __init__(self, n=6):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.y = torch.randint(0, 4, (n, 16, 16), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Conv2d(8, 4, 1),
    )


def test_scores_deterministic_isolated_and_failures_are_none(caplog):
    torch.manual_seed(3)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    rng = torch.get_rng_state()
    data = _Images()
    first = zc.on_dataset(model, data, seed=7)
    assert set(first) == set(zc.SCORES) and all(isinstance(v, float) for v in first.values())
    assert zc.on_dataset(model, data, seed=7) == first  # a pure function of the model, data and seed
    assert zc.on_dataset(model, data, seed=8) != first  # another batch (and dropout stream)
    assert not model.training  # the model is untouched: mode, weights and batch-norm statistics
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert torch.equal(torch.get_rng_state(), rng)  # and so is the caller's random stream
    # a data set of one image: the scores that need several are None (with a log line), the others are numbers
    one = zc.on_dataset(model, _Images(1), seed=7, names=["naswot", "zico", "grad_norm"])
    assert one["zico"] is None and isinstance(one["grad_norm"], float)
    assert "zero-cost score zico failed" in caplog.text
    with pytest.raises(KeyError, match="allowed"):
        zc.compute(model, data.x, data.y, 255, seed=0, names=["params"])
    assert zc.attribute("naswot") == "zc_naswot" and zc.attribute("madds") == "madds"


def test_scoring_batch_is_seeded_and_distinct():
    data = _Images(10)
    a, _ = zc.scoring_batch(data, 1, size=4)
    b, _ = zc.scoring_batch(data, 1, size=4)
    assert torch.equal(a, b) and a.shape[0] == 4
    assert len({tuple(r.flatten()[:3].tolist()) for r in a}) == 4
    assert zc.scoring_batch(data, 1, size=40)[0].shape[0] == 10
