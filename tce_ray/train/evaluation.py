"""Distributed evaluation: each worker scores its shard of the validation set, the
confusion matrices are summed over workers, and the metrics are computed once from the sum.

Shards: worker ``rank`` of ``world`` takes images ``rank::world`` (every image exactly
once). The model is the UNWRAPPED module (a DDP forward would run a buffer broadcast, a
collective, and the shards may have different lengths).
"""

from __future__ import annotations

import os

from contextlib import nullcontext
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tce_ray.core.metrics import confusion_matrix, fairness_report, per_class_iou
from tce_ray.core.objectives import get_objective


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices ``rank::world`` of ``range(n)`` (validates rank and world)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={rank}, world={world}")
    return list(range(rank, n, world))


LOADER_START_METHOD = "forkserver"
"""How DataLoader processes start inside a Ray Train worker. Not ``fork``: a Ray worker runs
gRPC, gloo and Ray's own threads, and a child forked while one of them holds a lock (the
allocator's, gRPC's, a logging lock) waits for it forever; a loader forked that way hung a
2-worker run (issue 23). ``forkserver`` starts its children from a clean, single-threaded
server process (one start per worker; cost measured in benchmarks/RESULTS.md, section 23)."""


def loader_process_options(num_workers: int) -> dict:
    """The DataLoader arguments for ``num_workers`` loader processes: a safe start method
    (:data:`LOADER_START_METHOD`, ``spawn`` where forkserver is missing) and persistent
    workers (started once per attempt, not once per pass); nothing for ``num_workers == 0``."""
    if num_workers <= 0:
        return {}
    import multiprocessing as mp

    # TCE_LOADER_START_METHOD: DEBUG ONLY (benchmarks/repro_loader_hang.py: "fork" brings back the hang)
    method = os.environ.get("TCE_LOADER_START_METHOD") or LOADER_START_METHOD
    method = method if method in mp.get_all_start_methods() else "spawn"
    return {"multiprocessing_context": mp.get_context(method), "persistent_workers": True}


def make_val_loader(dataset: Dataset, rank: int, world: int, *, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A batch-size-1 loader over this worker's shard (images may differ in size)."""
    shard = Subset(dataset, shard_indices(len(dataset), rank, world))
    return DataLoader(
        shard,
        batch_size=1,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **loader_process_options(num_workers),
    )


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all workers in place (no-op outside a process group of size > 1)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _collective_device() -> torch.device:
    """Where a collective's tensor must live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_counters(
    sums: Mapping[str, int | float] | None = None, maxes: Mapping[str, int | float] | None = None
) -> dict[str, int | float]:
    """Rank-local counters reduced over all workers: each value of ``sums`` summed, each of
    ``maxes`` maximised (float64, exact for integers below 2**53; ints come back as ints).
    A collective: every worker calls it with the same keys. Outside a process group of size
    > 1 the values come back as they are."""
    sums, maxes = dict(sums or {}), dict(maxes or {})
    out: dict[str, int | float] = {**sums, **maxes}
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return out
    device = _collective_device()
    for values, op in ((sums, dist.ReduceOp.SUM), (maxes, dist.ReduceOp.MAX)):
        if not values:
            continue
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        for (k, v), r in zip(values.items(), t.tolist()):
            out[k] = int(r) if isinstance(v, int) and not isinstance(v, bool) else float(r)
    return out


@torch.no_grad()
def evaluate_confusion(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    ignore_index: int = 255,
    on_batch: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The confusion matrix [K,K] int64 of ``model`` on ``loader``, summed over workers
    (``on_batch``: called after each batch, e.g. the stall watchdog's beat)."""
    was_training = model.training
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None and device.type == "cuda"
        else nullcontext()
    )
    try:
        for image, mask in loader:
            image = image.to(device, non_blocking=True)
            mask = mask.to(device, non_blocking=True)
            with ctx:
                logits = model(image)
            cm += confusion_matrix(logits.argmax(1), mask, num_classes, ignore_index=ignore_index)
            if on_batch is not None:
                on_batch()
    finally:
        model.train(was_training)
    return all_reduce_sum(cm)


def evaluation_metrics(cm: torch.Tensor | np.ndarray, class_names: Sequence[str], objectives: Sequence[str]) -> dict[str, float]:
    """Metrics of one evaluation: ``miou``, each objective by name, ``fairness/<key>`` and
    ``iou/<class>`` (fractions; NaN for classes absent from the validation data).

    An objective that is not finite (e.g. no class present at all) raises ValueError.
    """
    iou = per_class_iou(cm)
    if len(class_names) != iou.size:
        raise ValueError(f"{len(class_names)} class names for a {iou.size}-class confusion matrix")
    if np.isnan(iou).all():
        raise ValueError("no class is present in the validation data (every IoU is NaN); check the val split")
    out: dict[str, float] = {}
    report = fairness_report(iou, class_names=list(class_names))
    for key, value in report.items():
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[f"fairness/{key}"] = float(value)
    out["miou"] = float(np.nanmean(iou))
    for name in objectives:
        out[name] = float(get_objective(name)(iou))  # validates: finite scalar or ValueError
    for name, v in zip(class_names, iou):
        out[f"iou/{name}"] = float(v)
    return out
