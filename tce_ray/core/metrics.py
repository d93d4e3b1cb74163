"""Confusion matrices, per-class IoU and the paper's fairness criteria (Table 3).

NaN rules: a class whose union is 0 (absent from both truth and prediction) has IoU NaN.
NaN classes are *absent*: they are excluded from every statistic and listed under
``absent`` in :func:`fairness_report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["confusion_matrix", "per_class_iou", "fairness_report", "present_iou"]

# With ignore_index >= K, ignored pixels keep their own bins (ignore_index*K + pred) and need
# no extra pass; above this many bins they are remapped to one extra row instead.
_MAX_DIRECT_BINS = 1 << 16


def _check_int_tensor(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class ids, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(
            f"{name} must hold integer class ids, got dtype {x.dtype}; "
            f"pass argmax(logits, dim=1) for predictions and int64 label maps"
        )


def _index_dtype(max_index: int) -> torch.dtype:
    """Narrowest signed dtype that holds every bin index up to max_index."""
    if max_index <= torch.iinfo(torch.int16).max:
        return torch.int16
    if max_index <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


def _bad_targets(values: Sequence[int], num_classes: int, ignore_index: int) -> ValueError:
    shown = ", ".join(str(v) for v in list(values)[:5])
    return ValueError(
        f"target contains class ids outside [0, {num_classes}) that are not "
        f"ignore_index={ignore_index} (e.g. {shown}); remap them to {ignore_index} "
        f"or to a valid class, or check num_classes"
    )


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """int64 [K, K] counts: rows = ground truth, cols = prediction, on the inputs' device.

    ``pred`` and ``target`` are integer tensors of any equal shape. Pixels whose target is
    ``ignore_index`` count nowhere. Matrices of several batches/workers can be summed.
    Fast path: bin ``target*K + pred`` in the narrowest integer dtype with one bincount;
    ignored pixels land in bins past K*K that are dropped (no boolean-mask gather).
    Raises ValueError for shape/device mismatch, predictions outside [0, K) and target
    ids outside [0, K) other than ``ignore_index``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    _check_int_tensor(pred, "pred")
    _check_int_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}; "
            f"upsample/argmax the logits to the label size first"
        )
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target on {target.device}; move both to one device")
    k = num_classes
    out_kk = k * k
    if pred.numel() == 0:
        return torch.zeros((k, k), dtype=torch.int64, device=pred.device)

    # Cheap validation: one aminmax per tensor, a single host sync.
    p_lo, p_hi, t_lo, t_hi = torch.stack(
        [v.to(torch.int64) for v in (*torch.aminmax(pred), *torch.aminmax(target))]
    ).tolist()
    if p_lo < 0 or p_hi >= k:
        raise ValueError(
            f"pred has class ids in [{p_lo}, {p_hi}] but num_classes={k} allows only [0, {k - 1}]; "
            f"check num_classes or the model's output channels"
        )
    direct = ignore_index >= k and ignore_index * k + k <= _MAX_DIRECT_BINS
    if direct:
        if t_lo < 0 or (t_hi >= k and t_hi != ignore_index):
            raise _bad_targets([v for v in (t_lo, t_hi) if v < 0 or (v >= k and v != ignore_index)], k, ignore_index)
        rows = target
    else:  # ignore_index negative, inside [0, K) or huge: send ignored pixels to row K
        ignored = target == ignore_index
        bad = ~(ignored | ((target >= 0) & (target < k)))
        if bool(bad.any()):
            raise _bad_targets(torch.unique(target[bad]).tolist(), k, ignore_index)
        rows = torch.where(ignored, k, target.to(torch.int64))
        t_hi = k
    dtype = _index_dtype(t_hi * k + k - 1)
    idx = torch.add(pred.to(dtype), rows.to(dtype), alpha=k).reshape(-1)
    counts = torch.bincount(idx, minlength=out_kk)
    if direct and counts.numel() > out_kk:
        # Bins in [K*K, ignore*K) come from target ids in [K, ignore_index): invalid.
        stray = counts[out_kk : ignore_index * k]
        if bool(stray.any()):
            bad = sorted({int(i) // k + k for i in torch.nonzero(stray).flatten().tolist()})
            raise _bad_targets(bad, k, ignore_index)
    return counts[:out_kk].reshape(k, k)


def per_class_iou(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    """IoU per class as float64 FRACTIONS from a [K, K] confusion matrix; NaN where union == 0.

    IoU_c = cm[c,c] / (row_c + col_c - cm[c,c]). Accepts a torch tensor (any device) or array.
    """
    a = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"cm must be a square [K, K] matrix, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"cm must be numeric counts, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("cm must hold finite, non-negative counts; did you pass IoUs or logits?")
    tp = np.diagonal(a)
    union = a.sum(axis=0) + a.sum(axis=1) - tp
    iou = np.full(a.shape[0], np.nan, dtype=np.float64)
    present = union > 0
    iou[present] = tp[present].astype(np.float64) / union[present].astype(np.float64)
    return iou


def _vector(x: Any, name: str) -> np.ndarray:
    v = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector of per-class IoU, got shape {v.shape}")
    if np.any(np.isinf(v)):
        raise ValueError(f"{name} contains infinite values {v[np.isinf(v)].tolist()}; IoU must be finite or NaN (absent)")
    return v


def present_iou(iou: Any) -> np.ndarray:
    """The non-NaN entries of a per-class IoU vector (NaN = absent class). All-NaN -> ValueError.

    The single place that defines which classes count; shared by fairness_report and objectives.
    """
    v = _vector(iou, "iou")
    u = v[~np.isnan(v)]
    if u.size == 0:
        raise ValueError(
            f"all {v.size} classes are NaN (absent): no class appears in the evaluation data "
            f"or predictions; evaluate on more data or check the labels"
        )
    return u


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def fairness_report(
    iou: np.ndarray,
    reference: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The paper's Table 3 criteria for one per-class IoU vector (works on % or fractions).

    NaN classes are absent: excluded from every value and listed in ``absent``.
    - miou, worst (min), std (SAMPLE std, ddof=1; 0.0 when a single class is present).
    - worst_class: name (or index) of the minimum; ties -> the lowest class index.
    - p25 / p75: numpy's default (linear) percentile of the present IoUs; p25_mean / p75_mean:
      mean over classes at or below p25 / at or above p75 (ties at the cut are all included).
    - with ``reference`` (e.g. the MCCE baseline's IoU): over the classes present in both
      (n of them), order by reference IoU (ties -> lower class index first) and take the
      max(1, round_half_up(n/4)) lowest / highest: sorted_bottom25 / sorted_top25 are the means
      of ``iou`` over those classes.
    """
    v = _vector(iou, "iou")
    u = present_iou(v)
    k = v.size
    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) != k:
            raise ValueError(f"class_names has {len(class_names)} names but iou has {k} classes")

    def label(i: int) -> Any:
        return class_names[i] if class_names is not None else int(i)

    idx = np.flatnonzero(~np.isnan(v))
    p25 = float(np.percentile(u, 25))
    p75 = float(np.percentile(u, 75))
    report: dict[str, Any] = {
        "miou": float(np.mean(u)),
        "worst": float(np.min(u)),
        "worst_class": label(int(idx[np.argmin(u)])),
        "std": float(np.std(u, ddof=1)) if u.size > 1 else 0.0,
        "p25": p25,
        "p25_mean": float(np.mean(u[u <= p25])),
        "p75": p75,
        "p75_mean": float(np.mean(u[u >= p75])),
        "absent": [label(int(i)) for i in np.flatnonzero(np.isnan(v))],
    }
    if reference is not None:
        ref = _vector(reference, "reference")
        if ref.size != k:
            raise ValueError(f"reference has {ref.size} classes but iou has {k}; both must use the same class order")
        both = np.flatnonzero(~np.isnan(v) & ~np.isnan(ref))
        if both.size == 0:
            raise ValueError("no class is present (non-NaN) in both iou and reference")
        order = both[np.argsort(ref[both], kind="stable")]
        n = max(1, _round_half_up(both.size / 4))
        report["sorted_bottom25"] = float(np.mean(v[order[:n]]))
        report["sorted_top25"] = float(np.mean(v[order[-n:]]))
    return report
