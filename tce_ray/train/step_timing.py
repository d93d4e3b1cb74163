"""A few timed training steps of a run, in this process, without Ray (for ``--dry-run``).

:func:`measure_run` builds what one Ray Train worker of the run builds (its data set with the
crop and augmentation, its model, its loss, SGD) and times, after ``warmup`` untimed steps:

- ``steps`` optimiser steps on a batch of ``train.batch_size`` images (forward, loss,
  backward, update) with ``train.cpus_per_worker`` threads: the *compute* seconds per step;
- loading those batches from the training set (decode, crop, augmentation): the *data*
  seconds per step, which the worker's loader processes hide only where CPUs are free;
- the evaluation of ``eval_images`` validation images: seconds per validation image.

It is a measurement on this machine, now: a busy machine measures slow. A loss that needs
the class index or the weight actor (stochastic TCE, the class tilt) is timed as cross-entropy
(the tilt adds a few element-wise passes over the logits; the model dominates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tce_ray.train.runspec import RunSpec

__all__ = ["StepTiming", "measure_run"]


@dataclass(frozen=True)
class StepTiming:
    """What :func:`measure_run` measured (seconds)."""

    compute_s: float
    """Median seconds of one optimiser step (forward, loss, backward, update)."""
    data_s: float
    """Median seconds to load one training batch in this process."""
    eval_image_s: float
    """Mean seconds to evaluate one validation image."""
    steps: int
    val_images: int
    """The validation set's size (evaluations run over all of it, sharded over the workers)."""
    loss_timed: str
    """The loss that was timed (``mcce`` where the study's loss needs Ray)."""
    seconds: float
    """Wall time the measurement took."""

    def step_s(self, loader_workers: int, cpus_free: bool) -> float:
        """Seconds per step of a run: compute plus data when the loader runs in the worker
        (``loader_workers == 0``) or the CPUs are all busy; else the slower of the two."""
        if loader_workers == 0 or not cpus_free:
            return self.compute_s + self.data_s
        return max(self.compute_s, self.data_s / loader_workers)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def measure_run(run: RunSpec, *, steps: int = 3, warmup: int = 1, eval_images: int = 2) -> StepTiming:
    """Time ``steps`` training steps (after ``warmup``) and ``eval_images`` validation images
    of ``run`` on this machine's CPU (see the module docstring). ``steps >= 1``."""
    from tce_ray.core.losses import make_loss, needs_class_index, needs_weight_actor
    from tce_ray.data import build_splits
    from tce_ray.models.deeplabv3plus import deeplabv3plus
    from tce_ray.train.evaluation import evaluate_confusion, make_val_loader

    if steps < 1 or warmup < 0 or eval_images < 0:
        raise ValueError(f"measure_run: steps >= 1, warmup >= 0, eval_images >= 0 (got {steps}, {warmup}, {eval_images})")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(run.train.cpus_per_worker)))
    try:
        train_ds, val_ds = build_splits(run.data)  # as the worker builds them; no Ray imported
        k = train_ds.num_classes
        timed = run
        if needs_class_index(run) or needs_weight_actor(run):
            timed = run.model_copy(update={"loss": run.loss.model_copy(update={"name": "mcce"})})
        loss_fn = make_loss(timed, k, None)
        torch.manual_seed(run.train.seed)
        net = deeplabv3plus(k, run.model.backbone, run.model.output_stride, run.model.backbone_weights)
        opt = torch.optim.SGD(net.parameters(), lr=run.optim.lr, momentum=run.optim.momentum,
                              weight_decay=run.optim.weight_decay)
        gen = torch.Generator().manual_seed(run.train.seed)
        b = run.train.batch_size
        data_times, compute_times = [], []
        net.train()
        for i in range(warmup + steps):
            t = time.perf_counter()
            idx = torch.randint(len(train_ds), (b,), generator=gen).tolist()
            items = [train_ds[j] for j in idx]
            images = torch.stack([x for x, _ in items])
            masks = torch.stack([y for _, y in items])
            t_data = time.perf_counter()
            loss = loss_fn(net(images).float(), masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss.item()
            t_end = time.perf_counter()
            if i >= warmup:
                data_times.append(t_data - t)
                compute_times.append(t_end - t_data)
        n_eval = min(eval_images, len(val_ds))
        eval_image_s = 0.0
        if n_eval:
            loader = make_val_loader(torch.utils.data.Subset(val_ds, list(range(n_eval))), 0, 1)
            t = time.perf_counter()
            evaluate_confusion(net, loader, k, torch.device("cpu"))
            eval_image_s = (time.perf_counter() - t) / n_eval
        return StepTiming(
            compute_s=_median(compute_times), data_s=_median(data_times), eval_image_s=eval_image_s,
            steps=steps, val_images=len(val_ds), loss_timed=timed.loss.name, seconds=time.perf_counter() - t0,
        )
    finally:
        torch.set_num_threads(threads)
