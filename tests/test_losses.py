"""Tests of tce_ray.core.losses against independent float64 evaluations of the paper's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tce_ray.core.losses import (
    LOSS_NAMES,
    MCCE,
    FocalLoss,
    TiltedCrossEntropy,
    build_loss,
    focal_alpha_from_frequencies,
    per_class_ce,
)

IGN = 255
torch.set_num_threads(1)


# ----------------------------------------------------------------- reference (numpy, loops)
def ref_pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> list[list[tuple[int, float]]]:
    """Per image, the list of (class, CE) of its labelled pixels, in float64."""
    x = logits.detach().double().numpy()
    y = target.numpy()
    out = []
    for b in range(x.shape[0]):
        pix = []
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                c = int(y[b, i, j])
                if c == IGN:
                    continue
                z = x[b, :, i, j]
                m = z.max()
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                pix.append((c, lse - z[c]))
        out.append(pix)
    return out


def ref_tilt(values: list[float], t: float) -> float:
    """(1/t) log( (1/n) sum exp(t v) ) in float64, shifted by max(t v) so exp cannot overflow."""
    m = max(t * v for v in values)
    return (m + math.log(sum(math.exp(t * v - m) for v in values) / len(values))) / t


def ref_mcce(logits, target) -> float:
    ces = [ce for pix in ref_pixel_ce(logits, target) for _, ce in pix]
    return sum(ces) / len(ces) if ces else 0.0


def ref_tce_image(logits, target, t: float) -> float:
    per_image = [sum(ce for _, ce in pix) / len(pix) for pix in ref_pixel_ce(logits, target) if pix]
    return ref_tilt(per_image, t)


def ref_tce_class(logits, target, t: float) -> float:
    vals = []
    for pix in ref_pixel_ce(logits, target):
        if not pix:
            continue
        by_class: dict[int, list[float]] = {}
        for c, ce in pix:
            by_class.setdefault(c, []).append(ce)
        vals.append(ref_tilt([sum(v) / len(v) for v in by_class.values()], t))
    return sum(vals) / len(vals)


def make_batch(seed: int, b: int = 3, k: int = 5, h: int = 6, w: int = 7, scale: float = 2.0):
    """Random logits; per image labels from a random subset of classes (so some classes are
    absent), with ~20% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g) * scale
    target = torch.empty(b, h, w, dtype=torch.long)
    for i in range(b):
        subset = torch.randperm(k, generator=g)[: 2 + i % (k - 1)]
        target[i] = subset[torch.randint(len(subset), (h, w), generator=g)]
    target[torch.rand(b, h, w, generator=g) < 0.2] = IGN
    return logits, target


def all_losses() -> list[nn.Module]:
    return [
        MCCE(),
        TiltedCrossEntropy(1.0, "image"),
        TiltedCrossEntropy(-2.0, "class"),
        TiltedCrossEntropy(0.5, "class"),
        FocalLoss(alpha=[0.5, 1.0, 1.5, 2.0, 0.0], gamma=2.0),
    ]


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# ----------------------------------------------------------------- MCCE
@pytest.mark.parametrize("seed", [0, 1])
def test_mcce_matches_reference(seed):
    logits, target = make_batch(seed)
    assert rel_err(MCCE()(logits, target).item(), ref_mcce(logits, target)) < 1e-5


def test_mcce_uint8_target_and_custom_ignore():
    logits, target = make_batch(2)
    target[target == IGN] = 4  # use class 4 as the ignore label instead
    ref_target = target.clone()
    ref_target[ref_target == 4] = IGN
    got = MCCE(ignore_index=4)(logits, target.to(torch.uint8)).item()
    assert rel_err(got, ref_mcce(logits, ref_target)) < 1e-5


# ----------------------------------------------------------------- tilted CE
T_VALUES = [-10.0, -1.0, -0.01, 1e-4, 0.1, 1.0, 10.0, 50.0]


@pytest.mark.parametrize("t", T_VALUES)
@pytest.mark.parametrize("level", ["image", "class"])
def test_tce_matches_reference(level, t):
    logits, target = make_batch(3, b=4)
    got = TiltedCrossEntropy(t, level)(logits, target).item()
    ref = ref_tce_image(logits, target, t) if level == "image" else ref_tce_class(logits, target, t)
    assert rel_err(got, ref) < 1e-5, (got, ref)


def test_tce_is_not_mcce_and_levels_differ():
    logits, target = make_batch(4, b=4)
    vals = [TiltedCrossEntropy(1.0, lv)(logits, target).item() for lv in ("image", "class")]
    assert abs(vals[0] - vals[1]) > 1e-3
    assert abs(vals[0] - MCCE()(logits, target).item()) > 1e-3


@pytest.mark.parametrize("level", ["image", "class"])
def test_tce_tends_to_mean_as_t_goes_to_zero(level):
    logits, target = make_batch(5, b=4)
    pix = ref_pixel_ce(logits, target)
    if level == "image":
        mean = np.mean([np.mean([ce for _, ce in p]) for p in pix])
    else:
        per_image = []
        for p in pix:
            cls = {c for c, _ in p}
            per_image.append(np.mean([np.mean([ce for c2, ce in p if c2 == c]) for c in cls]))
        mean = np.mean(per_image)
    for t in (0.0, 1e-9, -1e-9, 1e-12):
        assert rel_err(TiltedCrossEntropy(t, level)(logits, target).item(), mean) < 1e-6
    # deviation shrinks linearly with t (second-order term: t * var / 2)
    dev = [abs(TiltedCrossEntropy(t, level)(logits, target).item() - mean) for t in (1e-1, 1e-2, 1e-3)]
    assert dev[0] > dev[1] > dev[2] > 0
    assert dev[2] < 0.02 * dev[0]  # ~ factor 100 between t = 0.1 and t = 0.001


def test_tce_limits_max_and_min():
    logits, target = make_batch(6, b=4)
    per_image = [sum(ce for _, ce in p) / len(p) for p in ref_pixel_ce(logits, target)]
    big = TiltedCrossEntropy(100.0, "image")(logits, target).item()
    small = TiltedCrossEntropy(-100.0, "image")(logits, target).item()
    assert max(per_image) - math.log(4) / 100 - 1e-5 <= big <= max(per_image) + 1e-5
    assert min(per_image) - 1e-5 <= small <= min(per_image) + math.log(4) / 100 + 1e-5


def hard_batch():
    """Logits whose CE is ~50 on some pixels and ~0 on others; some ignored pixels."""
    k = 4
    target = torch.tensor([[[0, 1, 2, 3], [0, 0, IGN, 1]], [[2, 2, 2, IGN], [3, 3, 1, 1]]])
    logits = torch.zeros(2, k, 2, 4)
    logits.scatter_(1, target.clamp(max=k - 1).unsqueeze(1), 20.0)  # confident and right
    logits[0, 1, 0, 0] = 70.0  # pixel (0,0,0), label 0: wrong by 50 -> CE ~ 50
    logits[1, 0, :, :2] = 70.0  # label 3 pixels of image 1: CE ~ 50
    return logits, target


@pytest.mark.parametrize("t", [-10.0, -1.0, 0.0, 1e-3, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("level", ["image", "class"])
def test_tce_finite_values_and_gradients_with_huge_losses(level, t):
    logits, target = hard_batch()
    ces = [ce for p in ref_pixel_ce(logits, target) for _, ce in p]
    assert max(ces) == pytest.approx(50.0, abs=1e-6)
    logits.requires_grad_(True)
    loss = TiltedCrossEntropy(t, level)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    if t != 0.0:
        ref = ref_tce_image(logits, target, t) if level == "image" else ref_tce_class(logits, target, t)
        assert rel_err(loss.item(), ref) < 1e-5


@pytest.mark.parametrize("level", ["image", "class"])
@pytest.mark.parametrize("t", [1.5, -2.0])
def test_tce_gradcheck(level, t):
    logits, target = make_batch(7, b=2, k=3, h=3, w=3, scale=1.0)
    logits = logits.double().requires_grad_(True)
    loss = TiltedCrossEntropy(t, level)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


def test_tce_bad_parameters():
    for t in (float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ValueError, match="tilt t"):
            TiltedCrossEntropy(t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="level"):
        TiltedCrossEntropy(1.0, level="pixel")  # type: ignore[arg-type]


# ----------------------------------------------------------------- ignore / empty handling
@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: repr(m))
def test_ignored_pixels_get_exactly_zero_gradient(loss):
    logits, target = make_batch(8)
    logits.requires_grad_(True)
    loss(logits, target).backward()
    ignored = (target == IGN).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    assert torch.equal(logits.grad[ignored], torch.zeros(int(ignored.sum())))
    assert (logits.grad[~ignored] != 0).any()


@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: repr(m))
def test_fully_ignored_image_is_skipped(loss):
    logits, target = make_batch(9, b=3)
    target_with_empty = target.clone()
    target_with_empty[1] = IGN
    keep = [0, 2]
    got = loss(logits, target_with_empty)
    assert torch.isfinite(got)
    expected = loss(logits[keep], target[keep])
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("loss", all_losses() + [TiltedCrossEntropy(0.0, "class")], ids=lambda m: repr(m))
def test_all_ignored_batch_gives_zero_with_grad_path(loss):
    logits, _ = make_batch(10)
    logits.requires_grad_(True)
    target = torch.full((3, 6, 7), IGN)
    out = loss(logits, target)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ----------------------------------------------------------------- focal loss
def test_focal_gamma0_no_alpha_equals_mcce():
    logits, target = make_batch(11)
    got = FocalLoss(alpha=None, gamma=0.0)(logits, target)
    assert got.item() == pytest.approx(MCCE()(logits, target).item(), rel=1e-6)


def test_focal_hand_computed():
    # one image, 1x3 pixels, K = 2; pixel 3 ignored
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, 0.0]]]])
    target = torch.tensor([[[0, 0, IGN]]])
    p1 = math.exp(2) / (math.exp(2) + 1)  # pixel 1, true class 0
    p2 = 1 / (1 + math.e)  # pixel 2, true class 0
    alpha = [0.25, 4.0]
    for g in (2.0, 0.5):
        per_pix = [-alpha[0] * (1 - p) ** g * math.log(p) for p in (p1, p2)]
        expected = sum(per_pix) / 2  # mean over the 2 labelled pixels, not sum of alphas
        got = FocalLoss(alpha=alpha, gamma=g)(logits, target).item()
        assert got == pytest.approx(expected, rel=1e-6)


def test_focal_alpha_weighting_mean_over_pixels():
    logits, target = make_batch(12)
    alpha = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0])
    ref = 0.0
    n = 0
    for pix in ref_pixel_ce(logits, target):
        for c, ce in pix:
            p = math.exp(-ce)
            ref += alpha[c].item() * (1 - p) ** 2 * ce
            n += 1
    got = FocalLoss(alpha=alpha, gamma=2.0)(logits, target).item()
    assert rel_err(got, ref / n) < 1e-5
    # uniform alpha scales the unweighted loss
    plain = FocalLoss(gamma=2.0)(logits, target).item()
    assert FocalLoss(alpha=[3.0] * 5)(logits, target).item() == pytest.approx(3 * plain, rel=1e-6)


def test_focal_finite_gradient_when_confident_and_gamma_below_one():
    logits = torch.tensor([[[[40.0, -3.0]], [[0.0, 0.0]]]], requires_grad=True)  # p == 1 in float32
    target = torch.tensor([[[0, 1]]])
    FocalLoss(gamma=0.5)(logits, target).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_bad_parameters():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[1.0, -1.0])
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[[1.0, 2.0]])
    logits, target = make_batch(13)
    with pytest.raises(ValueError, match="alpha has 3 entries"):
        FocalLoss(alpha=[1.0, 1.0, 1.0])(logits, target)


def test_focal_alpha_from_frequencies():
    alpha = focal_alpha_from_frequencies([0.5, 0.25, 0.25, 0.0])
    # inverse [2, 4, 4, -] normalised to mean 1 over the 3 present classes -> * 3/10
    assert alpha.dtype == torch.float32
    assert torch.allclose(alpha, torch.tensor([0.6, 1.2, 1.2, 0.0]))
    # scale-invariant, uniform -> all ones
    assert torch.allclose(focal_alpha_from_frequencies(np.array([10.0, 5.0, 5.0, 0.0])), alpha)
    assert torch.allclose(focal_alpha_from_frequencies([0.25] * 4), torch.ones(4))
    for bad in ([0.0, 0.0], [0.5, -0.1], [float("nan"), 1.0], [], [[0.5, 0.5]]):
        with pytest.raises(ValueError, match="freq"):
            focal_alpha_from_frequencies(bad)


# ----------------------------------------------------------------- per_class_ce
def test_per_class_ce_matches_reference():
    logits, target = make_batch(14)
    logits.requires_grad_(True)
    sums, counts = per_class_ce(logits, target, num_classes=5)
    assert counts.dtype == torch.int64 and sums.shape == counts.shape == (5,)
    assert not sums.requires_grad
    ref_sum = np.zeros(5)
    ref_cnt = np.zeros(5, dtype=np.int64)
    for pix in ref_pixel_ce(logits, target):
        for c, ce in pix:
            ref_sum[c] += ce
            ref_cnt[c] += 1
    assert counts.tolist() == ref_cnt.tolist()
    np.testing.assert_allclose(sums.numpy(), ref_sum, rtol=1e-5)
    with pytest.raises(ValueError, match="num_classes=4"):
        per_class_ce(logits, target, num_classes=4)


# ----------------------------------------------------------------- bad input
BAD_SHAPES = [
    (torch.zeros(2, 3, 4), torch.zeros(2, 4, 4, dtype=torch.long), "logits must be 4-D"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.long), "target must be 3-D"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 4, 4, dtype=torch.long), "batch size mismatch"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), "spatial size mismatch"),
]


@pytest.mark.parametrize("loss", all_losses()[:4], ids=lambda m: repr(m))
@pytest.mark.parametrize("logits,target,msg", BAD_SHAPES)
def test_bad_shapes(loss, logits, target, msg):
    with pytest.raises(ValueError, match=msg):
        loss(logits, target)


@pytest.mark.parametrize("loss", all_losses() + [None], ids=lambda m: repr(m))
@pytest.mark.parametrize("bad", [5, -1, 254])
def test_target_out_of_range(loss, bad):
    logits, target = make_batch(15)
    target[0, 0, 0] = bad
    with pytest.raises(ValueError, match=f"class id {bad}"):
        if loss is None:
            per_class_ce(logits, target, 5)
        else:
            loss(logits, target)


def test_bad_dtypes():
    logits, target = make_batch(16)
    with pytest.raises(TypeError, match="integer"):
        MCCE()(logits, target.float())
    with pytest.raises(TypeError, match="floating"):
        MCCE()(logits.long(), target)


# ----------------------------------------------------------------- factory
def test_build_loss_names_and_params():
    assert set(LOSS_NAMES) == {"mcce", "focal", "tce_image", "tce_class", "tce_stochastic"} | {
        "ce_weighted",
        "ce_balanced",
        "lovasz",
        "dice",
        "class_tilt_ce",
        "class_tilt_lovasz",
    }
    assert type(build_loss("mcce")) is MCCE
    assert build_loss("class_tilt_lovasz", signal="iou").signal == "iou"
    assert type(build_loss("tce_stochastic", ignore_index=0)) is MCCE
    assert build_loss("tce_stochastic", ignore_index=0).ignore_index == 0
    f = build_loss("focal", alpha=[1.0, 2.0], gamma=1.0)
    assert isinstance(f, FocalLoss) and f.gamma == 1.0 and f.alpha.tolist() == [1.0, 2.0]
    ti = build_loss("tce_image", t=0.1)
    tc = build_loss("tce_class", t=-1.0, ignore_index=3)
    assert (ti.level, ti.t) == ("image", 0.1)
    assert (tc.level, tc.t, tc.ignore_index) == ("class", -1.0, 3)
    for name in LOSS_NAMES:
        params: dict = {"t": 1.0} if name.startswith("tce_") and name != "tce_stochastic" else {}
        if name == "ce_weighted":
            params = {"class_weights": [1.0, 2.0]}
        assert isinstance(build_loss(name, **params), nn.Module)


def test_build_loss_errors():
    with pytest.raises(ValueError) as e:
        build_loss("jaccard")
    assert all(n in str(e.value) for n in LOSS_NAMES) and "'jaccard'" in str(e.value)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) t; accepted: alpha, gamma, ignore_index"):
        build_loss("focal", t=1.0)
    with pytest.raises(TypeError, match="tilt"):
        build_loss("tce_image", t=1.0, tilt=2.0)
    with pytest.raises(TypeError, match=r"needs parameter\(s\) t"):
        build_loss("tce_class")


# ----------------------------------------------------------------- autocast / devices
@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: repr(m))
def test_autocast_bfloat16(loss):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1)
    x = torch.randn(3, 3, 6, 7)
    _, target = make_batch(17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        out = loss(logits, target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(loss(logits.float(), target).item(), rel=1e-5)
    out.backward()
    assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", all_losses(), ids=lambda m: repr(m))
def test_cuda_matches_cpu(loss):
    logits, target = make_batch(18)
    cpu = loss(logits, target).item()
    dev = loss.cuda()
    lg = logits.cuda().requires_grad_(True)
    out = dev(lg, target.cuda())
    out.backward()
    assert out.device.type == "cuda" and torch.isfinite(lg.grad).all()
    assert out.item() == pytest.approx(cpu, rel=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        assert dev(lg.half(), target.cuda()).dtype == torch.float32
    sums, counts = per_class_ce(lg, target.cuda(), 5)
    assert sums.device.type == "cuda" and counts.dtype == torch.int64


# ----------------------------------------------------------------- class_ce (stochastic TCE's class signal)
def test_class_ce_from_kept_pixel_ce_matches_reference_and_per_class_ce():
    from tce_ray.core.losses import _class_ce_torch, class_ce

    logits, target = make_batch(16)
    logits.requires_grad_(True)
    loss_fn = build_loss("tce_stochastic", keep_pixel_ce=True)
    loss = loss_fn(logits, target)
    assert loss_fn.pixel_ce is not None and not loss_fn.pixel_ce.requires_grad
    loss.backward()  # the kept map does not hold the graph
    ref = {c: [0.0, 0] for c in range(5)}
    for pix in ref_pixel_ce(logits, target):  # float64 loop reference
        for c, ce in pix:
            ref[c][0] += ce
            ref[c][1] += 1
    sums, counts = per_class_ce(logits, target, 5)
    for c in range(5):
        out = class_ce(loss_fn.pixel_ce, target, c)
        assert out.shape == (2,) and not out.requires_grad
        assert torch.allclose(out, _class_ce_torch(loss_fn.pixel_ce, target, c))  # the accelerators' path
        s, n = out.tolist()
        assert n == ref[c][1] == counts[c].item()
        assert s == pytest.approx(ref[c][0], rel=1e-5, abs=1e-6)
        assert s == pytest.approx(sums[c].item(), rel=1e-5, abs=1e-6)


def test_class_ce_absent_class_default_mcce_and_bad_input():
    from tce_ray.core.losses import class_ce

    logits, target = make_batch(17)
    target[target == 3] = IGN
    plain = build_loss("mcce")
    plain(logits, target)
    assert plain.pixel_ce is None  # kept only when asked for
    keep = build_loss("mcce", keep_pixel_ce=True)
    assert torch.equal(keep(logits, target), plain(logits, target))
    assert class_ce(keep.pixel_ce, target, 3).tolist() == [0.0, 0.0]  # absent: zero sum, zero count
    with pytest.raises(ValueError, match="cls must be"):
        class_ce(keep.pixel_ce, target, -1)
    with pytest.raises(ValueError, match="cls must be"):
        class_ce(keep.pixel_ce, target, True)
    with pytest.raises(ValueError, match="one shape"):
        class_ce(keep.pixel_ce, target[:, :-1], 0)
    with pytest.raises(TypeError, match="target integer"):
        class_ce(keep.pixel_ce, target.float(), 0)
    with pytest.raises(TypeError, match="unknown parameter"):
        build_loss("focal", keep_pixel_ce=True)
