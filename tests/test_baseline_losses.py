"""Tests of tce_ray.core.baseline_losses against independent float64 references (loops, set
functions, hard-prediction identities) and numbers from the authors' Lovász code.

That the module does not import Ray is checked in tests/test_package.py."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tce_ray.core.baseline_losses import (
    WEIGHT_SCHEMES,
    ClassBalancedCrossEntropy,
    LovaszSoftmax,
    SoftDiceLoss,
    WeightedCrossEntropy,
    effective_number_weights,
    explicit_weights,
    inverse_frequency_weights,
    make_weighted_ce,
    median_frequency_weights,
    resolve_class_weights,
)
from tce_ray.core.losses import MCCE, TiltedCrossEntropy, focal_alpha_from_frequencies
from tce_ray.data.sampling import ClassIndex

IGN = 255
K = 5
torch.set_num_threads(1)


def make_batch(seed: int, b: int = 3, k: int = K, h: int = 6, w: int = 7, scale: float = 2.0):
    """Random logits; per image labels from a random subset of classes (some classes absent
    from an image, class k-1 absent from the whole batch), ~20% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * scale
    target = torch.empty(b, h, w, dtype=torch.long)
    for i in range(b):
        subset = torch.randperm(k - 1, generator=g)[: 2 + i % (k - 2)]
        target[i] = subset[torch.randint(len(subset), (h, w), generator=g)]
    target[torch.rand(b, h, w, generator=g) < 0.2] = IGN
    return logits, target


# ----------------------------------------------------------------- float64 references (loops)
def ref_pixels(x: Tensor, target: Tensor) -> list[list[tuple[int, Tensor, Tensor]]]:
    """Per image, (class, CE, probability vector) of each labelled pixel, from float64 logits
    ``x`` with a per-pixel log-sum-exp (autograd flows to ``x``)."""
    out = []
    for b in range(x.shape[0]):
        pix = []
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                c = int(target[b, i, j])
                if c == IGN:
                    continue
                z = x[b, :, i, j]
                lse = torch.logsumexp(z, 0)
                pix.append((c, lse - z[c], torch.exp(z - lse)))
        out.append(pix)
    return out


def mean(values: list) -> Tensor | float:
    return sum(values) / len(values) if values else 0.0


def ref_weighted_ce(x, target, weight, divide_by="weights"):
    num, den, n = 0.0, 0.0, 0
    for pix in ref_pixels(x, target):
        for c, ce, _ in pix:
            num = num + weight[c] * ce
            den += weight[c]
            n += 1
    d = den if divide_by == "weights" else n
    return num / d if d else x.sum() * 0.0


def ref_balanced(x, target, scope="image"):
    images = ref_pixels(x, target)
    groups = images if scope == "image" else [[p for pix in images for p in pix]]
    vals = []
    for pix in groups:
        if not pix:
            continue
        by_class: dict[int, list] = {}
        for c, ce, _ in pix:
            by_class.setdefault(c, []).append(ce)
        vals.append(mean([mean(v) for v in by_class.values()]))
    return mean(vals) if vals else x.sum() * 0.0


def ref_lovasz(x, target, per_image=False, classes="present"):
    """Lovász extension by its definition: errors sorted in decreasing order, each weighted
    by the increment of the Jaccard set function Delta(S) = |S| / |{y=c} u S| along the
    nested prefix sets S (computed directly, not by cumulative sums)."""
    k = x.shape[1]
    images = ref_pixels(x, target)
    groups = images if per_image else [[p for pix in images for p in pix]]
    vals = []
    for pix in groups:
        if not pix:
            continue
        losses = []
        for c in range(k):
            fg = [cl == c for cl, _, _ in pix]
            if classes == "present" and not any(fg):
                continue
            errs = [((1.0 if f else 0.0) - p[c]).abs() for f, (_, _, p) in zip(fg, pix)]
            order = sorted(range(len(pix)), key=lambda i: -errs[i].item())
            n_fg = sum(fg)
            total, prev, chosen = 0.0, 0.0, []
            for i in order:
                chosen.append(i)
                delta = len(chosen) / (n_fg + sum(1 for s in chosen if not fg[s]))
                total = total + errs[i] * (delta - prev)
                prev = delta
            losses.append(total)
        vals.append(mean(losses))
    return mean(vals) if vals else x.sum() * 0.0


def ref_dice(x, target, smooth=1.0, classes="present", ce_weight=0.0):
    k = x.shape[1]
    pix = [p for img in ref_pixels(x, target) for p in img]
    if not pix:
        return x.sum() * 0.0
    terms = []
    for c in range(k):
        inter = sum(p[c] for cl, _, p in pix if cl == c)
        n_c = sum(1 for cl, _, _ in pix if cl == c)
        if classes == "present" and n_c == 0:
            continue
        p_sum = sum(p[c] for _, _, p in pix)
        terms.append(1.0 - (2.0 * inter + smooth) / (p_sum + n_c + smooth))
    loss = mean(terms)
    if ce_weight:
        loss = loss + ce_weight * mean([ce for _, ce, _ in pix])
    return loss


def check_against_reference(loss: nn.Module, ref, logits: Tensor, target: Tensor, rtol: float = 2e-5):
    """Value and gradient of ``loss`` on float32 logits against ``ref`` on float64 logits."""
    x32 = logits.clone().requires_grad_(True)
    out = loss(x32, target)
    out.backward()
    x64 = logits.double().requires_grad_(True)
    expected = ref(x64, target)
    expected.backward()
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(expected.item(), rel=rtol, abs=1e-7)
    scale = x64.grad.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-5 * scale)


def gradcheck(loss: nn.Module, seed: int = 30) -> None:
    logits, target = make_batch(seed, b=2, k=4, h=3, w=3, scale=1.0)
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, target), (x,))


# ----------------------------------------------------------------- class weights
def test_inverse_frequency_weights_hand_computed():
    w = inverse_frequency_weights([50, 25, 25, 0])
    # 1/n = [1/50, 1/25, 1/25, -] -> scaled to mean 1 over the 3 present classes
    assert w.dtype == torch.float32 and w.shape == (4,)
    assert torch.allclose(w, torch.tensor([0.6, 1.2, 1.2, 0.0]))
    assert w[:3].mean().item() == pytest.approx(1.0)
    assert torch.allclose(inverse_frequency_weights([0.5, 0.25, 0.25, 0.0]), w)  # scale-free
    assert torch.allclose(inverse_frequency_weights([7, 7, 7]), torch.ones(3))
    assert torch.equal(w, focal_alpha_from_frequencies([50, 25, 25, 0]))


def test_median_frequency_weights_hand_computed():
    counts = np.array([[10, 0, 5, 0], [20, 2, 0, 0], [0, 0, 3, 0]])
    # labelled pixels per image: 15, 22, 3
    f = [Fraction(30, 15 + 22), Fraction(2, 22), Fraction(8, 15 + 3)]  # class 3 absent
    med = sorted(f)[1]
    raw = [med / fc for fc in f]
    expected = [float(r * 3 / sum(raw)) for r in raw] + [0.0]
    w = median_frequency_weights(counts)
    assert w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    # the raw SegNet weights: the median class gets 1
    raw_w = median_frequency_weights(counts, normalize=False)
    np.testing.assert_allclose(raw_w.numpy(), [float(r) for r in raw] + [0.0], rtol=1e-6)
    assert raw_w[2] == 1.0
    with pytest.raises(ValueError, match="normalize must be True or False"):
        median_frequency_weights(counts, normalize="no")
    # a ClassIndex is accepted, and the image-wise frequency differs from the global one
    assert torch.equal(median_frequency_weights(ClassIndex(counts)), w)
    assert not torch.allclose(w, inverse_frequency_weights(counts.sum(axis=0)))


def test_median_frequency_even_number_of_classes_uses_mean_of_middle_two():
    counts = np.array([[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 4, 0], [0, 0, 0, 8]]) * 3
    # every class alone in its images: f_c = 1 for all -> equal weights
    assert torch.allclose(median_frequency_weights(counts), torch.ones(4))
    counts = np.array([[1, 1, 2, 4]])  # one image: f = [1, 1, 2, 4] / 8, median 1.5 / 8
    raw = np.array([1.5, 1.5, 0.75, 0.375])
    np.testing.assert_allclose(median_frequency_weights(counts, normalize=False).numpy(), raw, rtol=1e-6)
    np.testing.assert_allclose(median_frequency_weights(counts).numpy(), raw * 4 / raw.sum(), rtol=1e-6)


def test_effective_number_weights():
    n = [1, 2, 3, 0]
    # beta = 1/2: (1 - b)/(1 - b^n) = 1, 2/3, 4/7 -> mean 1 over the present classes
    raw = np.array([1.0, 2 / 3, 4 / 7])
    expected = np.append(raw * 3 / raw.sum(), 0.0)
    np.testing.assert_allclose(effective_number_weights(n, 0.5).numpy(), expected, rtol=1e-6)
    # beta = 0: equal weights on the present classes
    assert torch.equal(effective_number_weights(n, 0.0), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    # beta -> 1: inverse frequency
    big = [1000, 20_000, 3_000_000]
    assert torch.allclose(effective_number_weights(big, 1 - 1e-12), inverse_frequency_weights(big), rtol=1e-5)
    # beta ** n is not formed: exact ratio (1 - b^2)/(1 - b) = 1 + b with b = 1 - 2^-40
    b = 1.0 - 2.0**-40
    w = effective_number_weights([1, 2], b)
    assert (w[0] / w[1]).item() == pytest.approx(1 + b, rel=2e-7)
    # pixel counts in the millions: beta must be close to 1 to move away from equal weights
    millions = [100_000, 2_000_000, 3_000_000]
    assert torch.allclose(effective_number_weights(millions, 0.999), torch.ones(3), atol=1e-6)
    assert not torch.allclose(effective_number_weights(millions, 1 - 1e-6), torch.ones(3), atol=1e-2)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5, "0.9", None, True])
def test_effective_number_bad_beta(bad):
    with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\)"):
        effective_number_weights([1, 2], bad)


@pytest.mark.parametrize(
    "fn", [inverse_frequency_weights, lambda c: effective_number_weights(c, 0.5)], ids=["inverse", "effective"]
)
@pytest.mark.parametrize("bad", [[0, 0], [1, -1], [float("nan"), 1], [], [[1, 2]]])
def test_weight_functions_reject_bad_counts(fn, bad):
    with pytest.raises(ValueError, match="class_pixels"):
        fn(bad)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.array([1, 2]), -np.ones((2, 2)), np.zeros((2, 0))])
def test_median_frequency_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="per-image class counts"):
        median_frequency_weights(bad)


def test_explicit_weights():
    assert explicit_weights([0.0, 2.0, 3.5]).tolist() == [0.0, 2.0, 3.5]  # not rescaled
    for bad, msg in [([1.0, -1.0], ">= 0"), ([float("inf")], ">= 0"), ([0.0, 0.0], "all 0"), ([[1.0]], "1-D")]:
        with pytest.raises(ValueError, match=msg):
            explicit_weights(bad)
    with pytest.raises(ValueError, match="got 2 class weights for 3 classes"):
        explicit_weights([1.0, 2.0], num_classes=3)


def test_resolve_class_weights_dispatch_and_errors():
    counts = np.array([[10, 0, 5, 0], [20, 2, 0, 0], [0, 0, 3, 0]])
    index = ClassIndex(counts)
    assert torch.equal(resolve_class_weights("inverse_frequency", index), inverse_frequency_weights([30, 2, 8, 0]))
    assert torch.equal(resolve_class_weights("median_frequency", index), median_frequency_weights(counts))
    assert torch.equal(
        resolve_class_weights("effective_number", counts, beta=0.9), effective_number_weights([30, 2, 8, 0], 0.9)
    )
    assert resolve_class_weights([1, 2, 3, 4], index).tolist() == [1, 2, 3, 4]
    assert set(WEIGHT_SCHEMES) == {"inverse_frequency", "median_frequency", "effective_number"}
    with pytest.raises(ValueError, match="unknown class-weight scheme 'inverse'.*inverse_frequency"):
        resolve_class_weights("inverse", index)
    with pytest.raises(ValueError, match="needs the training set's class index"):
        resolve_class_weights("median_frequency")
    with pytest.raises(ValueError, match="beta is required"):
        resolve_class_weights("effective_number", index)
    with pytest.raises(ValueError, match="beta is required .* used by no other"):
        resolve_class_weights("median_frequency", index, beta=0.9)
    with pytest.raises(ValueError, match="not by an explicit list"):
        resolve_class_weights([1.0, 2.0], beta=0.9)
    with pytest.raises(ValueError, match="got 3 class weights for 4 classes"):
        resolve_class_weights([1.0, 2.0, 3.0], index)


# ----------------------------------------------------------------- weighted CE
WEIGHTS = [0.5, 2.0, 1.0, 3.0, 0.0]


@pytest.mark.parametrize("divide_by", ["weights", "pixels"])
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_ce_matches_reference(divide_by, seed):
    logits, target = make_batch(seed)
    loss = WeightedCrossEntropy(WEIGHTS, divide_by=divide_by)
    check_against_reference(loss, lambda x, y: ref_weighted_ce(x, y, WEIGHTS, divide_by), logits, target)


def test_weighted_ce_default_is_torch_weighted_mean_and_scale_free():
    logits, target = make_batch(2)
    w = torch.tensor(WEIGHTS)
    got = WeightedCrossEntropy(w)(logits, target)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target, weight=w, ignore_index=IGN).item(), rel=1e-6)
    assert WeightedCrossEntropy(w * 7)(logits, target).item() == pytest.approx(got.item(), rel=1e-6)
    # divide_by="pixels" scales with the weights; equal weights give MCCE either way
    pix = WeightedCrossEntropy(w, divide_by="pixels")(logits, target).item()
    assert WeightedCrossEntropy(w * 7, divide_by="pixels")(logits, target).item() == pytest.approx(7 * pix, rel=1e-6)
    mcce = MCCE()(logits, target).item()
    for d in ("weights", "pixels"):
        assert WeightedCrossEntropy([1.0] * K, divide_by=d)(logits, target).item() == pytest.approx(mcce, rel=1e-6)


def test_weighted_ce_all_zero_weight_pixels_give_zero_not_nan():
    logits, target = make_batch(3)
    target[target != IGN] = 4  # every labelled pixel has weight 0
    x = logits.requires_grad_(True)
    out = WeightedCrossEntropy(WEIGHTS)(x, target)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_weighted_and_balanced_ce_gradcheck():
    for loss in (
        WeightedCrossEntropy([0.5, 2.0, 1.0, 0.0]),
        WeightedCrossEntropy([0.5, 2.0, 1.0, 0.0], divide_by="pixels"),
        ClassBalancedCrossEntropy("image"),
        ClassBalancedCrossEntropy("batch"),
    ):
        gradcheck(loss)


def test_weighted_ce_bad_settings():
    with pytest.raises(ValueError, match="divide_by must be one of 'weights', 'pixels'"):
        WeightedCrossEntropy(WEIGHTS, divide_by="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        WeightedCrossEntropy([1.0, -2.0])
    logits, target = make_batch(4)
    with pytest.raises(ValueError, match="3 class weights but the logits have K=5"):
        WeightedCrossEntropy([1.0, 1.0, 1.0])(logits, target)


def test_make_weighted_ce_from_settings():
    counts = np.array([[10, 0, 5, 0, 1], [20, 2, 0, 0, 1], [0, 0, 3, 0, 1]])
    index = ClassIndex(counts)
    m = make_weighted_ce("median_frequency", index=index)
    assert isinstance(m, WeightedCrossEntropy) and m.divide_by == "weights"
    assert torch.equal(m.weight, median_frequency_weights(counts))
    assert m.weight[3] == 0.0  # absent from the training set
    m = make_weighted_ce("effective_number", beta=0.99, index=index, divide_by="pixels", ignore_index=0)
    assert torch.equal(m.weight, effective_number_weights(counts.sum(0), 0.99)) and m.ignore_index == 0
    assert make_weighted_ce([1, 2, 3, 4, 5]).weight.tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(make_weighted_ce(index=index).weight, median_frequency_weights(counts))  # the default


# ----------------------------------------------------------------- class-balanced CE
@pytest.mark.parametrize("scope", ["image", "batch"])
@pytest.mark.parametrize("seed", [5, 6])
def test_balanced_ce_matches_reference(scope, seed):
    logits, target = make_batch(seed, b=4)
    check_against_reference(ClassBalancedCrossEntropy(scope), lambda x, y: ref_balanced(x, y, scope), logits, target)


def test_balanced_ce_hand_computed():
    # 1 image, 1x4, K = 2: three pixels of class 0 and one of class 1, one more ignored
    logits = torch.tensor([[[[2.0, 0.0, 1.0, -1.0, 9.0]], [[0.0, 1.0, 1.0, 0.5, 0.0]]]])
    target = torch.tensor([[[0, 0, 0, 1, IGN]]])
    ce = [math.log1p(math.exp(-2.0)), math.log1p(math.e), math.log(2.0), math.log1p(math.exp(-1.5))]
    expected = ((ce[0] + ce[1] + ce[2]) / 3 + ce[3]) / 2
    mcce = sum(ce) / 4
    for scope in ("image", "batch"):
        assert ClassBalancedCrossEntropy(scope)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert MCCE()(logits, target).item() == pytest.approx(mcce, rel=1e-6)


def test_balanced_ce_scopes_differ():
    logits, target = make_batch(7, b=4)
    a = ClassBalancedCrossEntropy("image")(logits, target).item()
    b = ClassBalancedCrossEntropy("batch")(logits, target).item()
    assert abs(a - b) > 1e-3


@pytest.mark.parametrize("seed", [8, 9])
def test_balanced_ce_is_class_level_tce_at_t_to_zero(seed):
    """The identity: class-balanced CE (scope image) = lim_{t->0} TiltedCrossEntropy(t, 'class')."""
    logits, target = make_batch(seed, b=4)
    grads = {}
    vals = {}
    for name, loss in [
        ("balanced", ClassBalancedCrossEntropy("image")),
        ("tce_1e-9", TiltedCrossEntropy(1e-9, "class")),
        ("tce_-1e-9", TiltedCrossEntropy(-1e-9, "class")),
        ("tce_1e-5", TiltedCrossEntropy(1e-5, "class")),  # the log-sum-exp path proper
    ]:
        x = logits.clone().requires_grad_(True)
        out = loss(x, target)
        out.backward()
        vals[name], grads[name] = out.item(), x.grad
    x64 = logits.double().requires_grad_(True)
    analytic = ref_balanced(x64, target)  # the per-image mean over present classes, by loops
    analytic.backward()
    for name in vals:
        assert vals[name] == pytest.approx(analytic.item(), rel=1e-5), name
        torch.testing.assert_close(grads[name].double(), x64.grad, rtol=1e-4, atol=1e-7)
    assert vals["balanced"] == pytest.approx(vals["tce_1e-9"], rel=1e-7)
    # and the tilt moves it away linearly: t = 0.1 differs by ~ t * var / 2 > 0
    tilted = TiltedCrossEntropy(0.1, "class")(logits, target).item()
    assert tilted - vals["balanced"] > 1e-4


# ----------------------------------------------------------------- Lovász-softmax
def ref_input():
    """A fixed input without random numbers: K = 5 (class 4 absent), ignored pixels."""
    b, k, h, w = 2, 5, 4, 5
    logits = (3 * torch.sin(torch.arange(b * k * h * w, dtype=torch.float64) * 0.7 + 0.3)).reshape(b, k, h, w)
    bb, ii, jj = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    target = (ii * 7 + jj * 3 + bb * 2) % 4
    target[(ii + jj + bb) % 5 == 0] = IGN
    return logits.float(), target


# Numbers from the authors' reference (github.com/bermanmaxim/LovaszSoftmax, commit 7d48792,
# pytorch/lovasz_losses.py): lovasz_softmax(softmax(x), target, classes, per_image, ignore=255)
# on ref_input() in float32: (value, sum of squared gradient w.r.t. the logits, grad[0,1,1,2]).
AUTHORS_NUMBERS = {
    (False, "present"): (0.8463010191917419, 0.0004862119694299231, -0.003345367731526494),
    (False, "all"): (0.8000122308731079, 0.0037943449091205343, -0.002676294418051839),
    (True, "present"): (0.8537601232528687, 0.00044081803852623623, -0.0031596918124705553),
    (True, "all"): (0.8025060296058655, 0.0021693346918354494, -0.0025277535896748304),
}


@pytest.mark.parametrize("per_image,classes", list(AUTHORS_NUMBERS))
def test_lovasz_matches_authors_reference_numbers(per_image, classes):
    logits, target = ref_input()
    x = logits.requires_grad_(True)
    out = LovaszSoftmax(per_image=per_image, classes=classes)(x, target)
    out.backward()
    value, grad_sq, grad_entry = AUTHORS_NUMBERS[(per_image, classes)]
    assert out.item() == pytest.approx(value, rel=1e-6)
    assert (x.grad.double() ** 2).sum().item() == pytest.approx(grad_sq, rel=1e-5)
    assert x.grad[0, 1, 1, 2].item() == pytest.approx(grad_entry, rel=1e-5)


@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", [10, 11])
def test_lovasz_matches_reference(per_image, classes, seed):
    logits, target = make_batch(seed, b=3, h=5, w=5)
    check_against_reference(
        LovaszSoftmax(per_image, classes), lambda x, y: ref_lovasz(x, y, per_image, classes), logits, target
    )


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_of_hard_predictions_is_one_minus_iou(per_image):
    """At 0/1 errors the Lovász extension equals the set function: 1 - IoU per class."""
    logits, target = make_batch(12, b=3)
    logits = logits * 1e4  # softmax exactly one-hot in float32
    pred = logits.argmax(1)
    groups = [(pred[i : i + 1], target[i : i + 1]) for i in range(3)] if per_image else [(pred, target)]
    vals = []
    for p, t in groups:
        lab = t != IGN
        ious = []
        for c in range(K):
            if not (t == c).any():
                continue
            inter = ((p == c) & (t == c)).sum().item()
            union = (((p == c) & lab) | (t == c)).sum().item()
            ious.append(1 - inter / union)
        vals.append(np.mean(ious))
    x = logits.requires_grad_(True)
    out = LovaszSoftmax(per_image=per_image)(x, target)
    out.backward()
    assert out.item() == pytest.approx(np.mean(vals), rel=1e-6)
    assert torch.isfinite(x.grad).all()


def test_lovasz_per_image_skips_fully_ignored_images():
    logits, target = make_batch(13, b=3)
    empty = target.clone()
    empty[1] = IGN
    loss = LovaszSoftmax(per_image=True)
    assert loss(logits, empty).item() == pytest.approx(loss(logits[[0, 2]], target[[0, 2]]).item(), rel=1e-6)
    # per batch, ignored pixels are simply excluded (same as dropping them)
    batch = LovaszSoftmax(per_image=False)
    assert batch(logits, empty).item() == pytest.approx(batch(logits[[0, 2]], target[[0, 2]]).item(), rel=1e-6)


def test_lovasz_gradcheck():
    for per_image in (False, True):
        for classes in ("present", "all"):
            gradcheck(LovaszSoftmax(per_image, classes))


def test_lovasz_bad_settings():
    with pytest.raises(ValueError, match="per_image must be True or False"):
        LovaszSoftmax(per_image="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="classes must be one of 'present', 'all'"):
        LovaszSoftmax(classes=[0, 1])  # type: ignore[arg-type]


# ----------------------------------------------------------------- soft Dice
@pytest.mark.parametrize(
    "smooth,classes,ce_weight", [(1.0, "present", 0.0), (0.0, "present", 0.0), (0.5, "all", 0.0), (1.0, "present", 0.7)]
)
@pytest.mark.parametrize("seed", [14, 15])
def test_dice_matches_reference(smooth, classes, ce_weight, seed):
    logits, target = make_batch(seed)
    check_against_reference(
        SoftDiceLoss(smooth, classes, ce_weight), lambda x, y: ref_dice(x, y, smooth, classes, ce_weight), logits, target
    )


def test_dice_of_hard_predictions_and_dice_ce_sum():
    logits, target = make_batch(16)
    hard = logits * 1e4
    pred = hard.argmax(1)
    lab = target != IGN
    scores = []
    for c in range(K):
        if (target == c).any():
            tp = ((pred == c) & (target == c)).sum().item()
            fp = ((pred == c) & lab & (target != c)).sum().item()
            fn = ((pred != c) & (target == c)).sum().item()
            scores.append(2 * tp / (2 * tp + fp + fn))
    assert SoftDiceLoss(smooth=0.0)(hard, target).item() == pytest.approx(1 - np.mean(scores), rel=1e-6)
    dice = SoftDiceLoss()(logits, target).item()
    both = SoftDiceLoss(ce_weight=2.5)(logits, target).item()
    assert both == pytest.approx(dice + 2.5 * MCCE()(logits, target).item(), rel=1e-6)


def test_dice_smooth_matters_only_slightly_and_all_penalises_absent_classes():
    logits, target = make_batch(17)
    present = SoftDiceLoss(classes="present")(logits, target).item()
    all_ = SoftDiceLoss(classes="all")(logits, target).item()
    assert all_ != pytest.approx(present, rel=1e-3)  # class 4 is absent from the batch
    # a confident "no" for the absent class brings its Dice term to ~0 loss (s / (0 + s))
    logits[:, 4] = -1e4
    x = logits.requires_grad_(True)
    SoftDiceLoss(classes="all")(x, target).backward()
    assert torch.isfinite(x.grad).all()


def test_dice_gradcheck():
    for smooth, classes, ce_weight in [(1.0, "present", 0.0), (0.0, "present", 1.0), (0.1, "all", 0.0)]:
        gradcheck(SoftDiceLoss(smooth, classes, ce_weight))


def test_dice_bad_settings():
    for bad in (-1.0, float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ValueError, match="dice smooth must be a finite number >= 0"):
            SoftDiceLoss(smooth=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="ce_weight must be a finite number >= 0"):
            SoftDiceLoss(ce_weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="smooth must be > 0 with classes='all'"):
        SoftDiceLoss(smooth=0.0, classes="all")
    with pytest.raises(ValueError, match="classes must be one of"):
        SoftDiceLoss(classes="some")  # type: ignore[arg-type]


def test_balanced_bad_settings():
    with pytest.raises(ValueError, match="scope must be one of 'image', 'batch'"):
        ClassBalancedCrossEntropy("pixel")  # type: ignore[arg-type]


# ----------------------------------------------------------------- shared behaviour
def all_losses() -> list[nn.Module]:
    return [
        WeightedCrossEntropy(WEIGHTS),
        WeightedCrossEntropy(WEIGHTS, divide_by="pixels"),
        ClassBalancedCrossEntropy("image"),
        ClassBalancedCrossEntropy("batch"),
        LovaszSoftmax(per_image=False),
        LovaszSoftmax(per_image=True, classes="all"),
        SoftDiceLoss(),
        SoftDiceLoss(smooth=0.5, classes="all", ce_weight=1.0),
    ]


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_ignored_pixels_get_exactly_zero_gradient(loss):
    logits, target = make_batch(18)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    ignored = (target == IGN).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    assert torch.equal(logits.grad[ignored], torch.zeros(int(ignored.sum())))
    assert (logits.grad[~ignored] != 0).any()


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_changing_ignored_logits_changes_nothing(loss):
    logits, target = make_batch(19)
    other = logits.clone()
    other[(target == IGN).unsqueeze(1).expand_as(logits)] = 1e3
    assert loss(other, target).item() == loss(logits, target).item()


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_fully_ignored_image_is_skipped(loss):
    logits, target = make_batch(26, b=3)
    with_empty = target.clone()
    with_empty[1] = IGN
    keep = [0, 2]
    assert loss(logits, with_empty).item() == pytest.approx(loss(logits[keep], target[keep]).item(), rel=1e-6)


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_all_ignored_batch_gives_zero_with_grad_path(loss):
    logits, _ = make_batch(20)
    logits.requires_grad_(True)
    out = loss(logits, torch.full((3, 6, 7), IGN))
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
@pytest.mark.parametrize("scale", [1e3, 1e6])
def test_finite_for_extreme_logits(loss, scale):
    logits, target = make_batch(21, scale=scale)
    logits.requires_grad_(True)
    out = loss(logits, target)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_custom_ignore_index_and_uint8_target(loss):
    logits, target = make_batch(22)
    relabelled = target.clone()
    relabelled[relabelled == IGN] = 200
    loss.ignore_index = 200
    got = loss(logits, relabelled.to(torch.uint8)).item()
    loss.ignore_index = IGN
    assert got == pytest.approx(loss(logits, target).item(), rel=1e-6)


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_half_and_bfloat16_logits_are_cast_to_float32(loss):
    logits, target = make_batch(23)
    for dtype in (torch.float16, torch.bfloat16):
        low = logits.to(dtype).requires_grad_(True)
        out = loss(low, target)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(loss(low.detach().float(), target).item(), rel=1e-6)
        out.backward()
        assert low.grad.dtype == dtype and torch.isfinite(low.grad.float()).all()
    assert loss(logits.double(), target).dtype == torch.float64


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_autocast_bfloat16(loss):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, K, 1)
    x = torch.randn(3, 3, 6, 7)
    _, target = make_batch(24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        out = loss(logits, target)
    assert out.dtype == torch.float32
    out.backward()
    assert torch.isfinite(conv.weight.grad).all()


BAD_INPUTS = [
    (torch.zeros(2, K, 4), torch.zeros(2, 4, 4, dtype=torch.long), ValueError, "logits must be 4-D"),
    (torch.zeros(2, K, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long), ValueError, "target must be 3-D"),
    (torch.zeros(2, K, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long), ValueError, "batch size mismatch"),
    (torch.zeros(2, K, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), ValueError, "spatial size mismatch"),
    (torch.zeros(2, K, 4, 4), torch.zeros(2, 4, 4), TypeError, "integer"),
    (torch.zeros(2, K, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long), TypeError, "floating"),
    (torch.zeros(2, K, 4, 4), torch.full((2, 4, 4), K), ValueError, f"class id {K}"),
    (torch.zeros(2, K, 4, 4), torch.full((2, 4, 4), -1), ValueError, "class id -1"),
]


@pytest.mark.parametrize("loss", all_losses(), ids=repr)
@pytest.mark.parametrize("logits,target,exc,msg", BAD_INPUTS, ids=[b[3] for b in BAD_INPUTS])
def test_bad_input(loss, logits, target, exc, msg):
    with pytest.raises(exc, match=msg):
        loss(logits, target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", all_losses(), ids=repr)
def test_cuda_matches_cpu(loss):
    logits, target = make_batch(25)
    cpu = loss(logits, target).item()
    dev = loss.cuda()
    lg = logits.cuda().requires_grad_(True)
    out = dev(lg, target.cuda())
    out.backward()
    assert out.device.type == "cuda" and torch.isfinite(lg.grad).all()
    assert out.item() == pytest.approx(cpu, rel=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        assert dev(lg.half(), target.cuda()).dtype == torch.float32


# ----------------------------------------------------------------- registry
def test_baselines_are_built_by_name():
    from tce_ray.core.losses import LOSS_NAMES, build_loss

    assert {"ce_weighted", "ce_balanced", "lovasz", "dice"} <= set(LOSS_NAMES)
    counts = np.array([[10, 0, 5, 0, 1], [20, 2, 0, 0, 1], [0, 0, 3, 0, 1]])
    index = ClassIndex(counts)
    m = build_loss("ce_weighted", class_weights="effective_number", beta=0.9, index=index, divide_by="pixels")
    assert isinstance(m, WeightedCrossEntropy) and m.divide_by == "pixels"
    assert torch.equal(m.weight, effective_number_weights(counts.sum(0), 0.9))
    assert torch.equal(build_loss("ce_weighted", index=index).weight, median_frequency_weights(counts))
    assert build_loss("ce_weighted", class_weights=[1, 2]).weight.tolist() == [1, 2]
    b = build_loss("ce_balanced", scope="batch", ignore_index=0)
    assert isinstance(b, ClassBalancedCrossEntropy) and (b.scope, b.ignore_index) == ("batch", 0)
    assert build_loss("ce_balanced").scope == "image"
    lv = build_loss("lovasz", per_image=True, classes="all")
    assert isinstance(lv, LovaszSoftmax) and (lv.per_image, lv.classes) == (True, "all")
    assert (build_loss("lovasz").per_image, build_loss("lovasz").classes) == (False, "present")
    d = build_loss("dice", ce_weight=1.0, smooth=0.5, classes="all")
    assert isinstance(d, SoftDiceLoss) and (d.ce_weight, d.smooth, d.classes) == (1.0, 0.5, "all")
    assert build_loss("dice").ce_weight == 0.0
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) t"):
        build_loss("lovasz", t=1.0)
    with pytest.raises(ValueError, match="needs the training set's class index"):
        build_loss("ce_weighted", class_weights="inverse_frequency")
    with pytest.raises(ValueError, match="beta is required"):
        build_loss("ce_weighted", class_weights="effective_number", index=index)
