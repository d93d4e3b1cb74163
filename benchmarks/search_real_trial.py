"""A real training trial in this process, without Ray: the objective of ``bench_search --objective real``.

The surrogate (:mod:`benchmarks.search_surrogate`) is fast but its shape between the measured
settings is assumed. This objective trains for real: the trial's ``RunSpec`` (the study's
``trial_run`` of the base run and the sampler's values), the data set, loss, model and class
index built by the same functions a Ray Train worker calls (``build_datasets``,
``make_loss``, ``ClassIndex.build``, ``initial_weight_state``, ``deeplabv3plus``,
``poly_lr``, ``evaluate_confusion``, ``evaluation_metrics``), and stochastic TCE's sampler
reading a local ``TiltState`` as the README's plain PyTorch loop does.

What differs from a run on Ray (and why it does not change what is compared): one process
and one worker, so the state sees each report at once (a run's reports lag by up to
``train.weight_sync_every`` steps); no checkpoints, progress lines or actor. Every sampler
sees the same objective, so the comparison between samplers is fair; the absolute numbers
are those of short trials on the synthetic data (see ``benchmarks/bench_search.py``: 12
classes merged into 7 so that the worst IoU is not 0 after a few dozen steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["RealTrials"]


class RealTrials:
    """Trains one trial config of a study in this process and returns its metrics.

    ``config``: the study's :class:`~tce_ray.study.config.StudyConfig` (its ``run`` is the
    base run); ``cache_dir``: where the class index is cached; ``threads``: torch threads.
    """

    def __init__(self, config: Any, cache_dir: str | Path, *, threads: int = 1) -> None:
        from tce_ray.train.worker_loop import build_datasets

        self.config, self.cache_dir, self.threads = config, str(cache_dir), threads
        self.train_ds, self.val_ds = build_datasets(config.run)
        self._index: Any = None

    def index(self) -> Any:
        from tce_ray.data.sampling import ClassIndex

        if self._index is None:
            self._index = ClassIndex.build(self.train_ds, cache_dir=self.cache_dir)
        return self._index

    def __call__(self, trial_config: Mapping[str, Any]) -> dict[str, float]:
        """``{"miou", "worst_iou", "iou_std", "train_loss"}`` (fractions; train_loss: the last step's loss)
        of the trial ``trial_config`` (flat keys, as ``SearchSpace`` returns them)."""
        from torch.utils.data import DataLoader

        from tce_ray.core.losses import class_ce, make_loss, needs_class_index, needs_weight_actor
        from tce_ray.data.sampling import TiltedBatchSampler
        from tce_ray.models import deeplabv3plus
        from tce_ray.study.search_space import trial_run
        from tce_ray.train.evaluation import evaluate_confusion, evaluation_metrics
        from tce_ray.train.worker_loop import initial_weight_state, poly_lr

        torch.set_num_threads(self.threads)
        run = trial_run(self.config.run, trial_config)
        tr, device = run.train, torch.device("cpu")
        num_classes = self.train_ds.num_classes
        index = self.index() if needs_class_index(run) else None
        loss_fn = make_loss(run, num_classes, index)
        torch.manual_seed(tr.seed)
        net = deeplabv3plus(num_classes, run.model.backbone, run.model.output_stride, run.model.backbone_weights)
        opt = torch.optim.SGD(net.parameters(), lr=run.optim.lr, momentum=run.optim.momentum,
                              weight_decay=run.optim.weight_decay)
        state = sampler = None
        if needs_weight_actor(run):
            if run.loss.name != "tce_stochastic":
                raise ValueError(f"the in-process trial runs stochastic TCE's state only, not {run.loss.name!r}")
            state = initial_weight_state(run, num_classes, index.drawable(run.loss.min_pixels))
            sampler = TiltedBatchSampler(
                index, state, tr.batch_size, num_batches=tr.steps, min_pixels=run.loss.min_pixels, seed=tr.seed,
                image_power=run.sampling.image_power, class_crop=run.sampling.class_crop,
            )  # fmt: skip
            loader = DataLoader(self.train_ds, batch_sampler=sampler, num_workers=0)
        else:
            g = torch.Generator().manual_seed(tr.seed)
            loader = DataLoader(self.train_ds, batch_size=tr.batch_size, shuffle=True, drop_last=True,
                                num_workers=0, generator=g)
        net.train()
        step, last = 0, float("nan")
        while step < tr.steps:
            for images, masks in loader:
                if step >= tr.steps:
                    break
                cls = sampler.pop_batch_class() if sampler is not None else None
                for group in opt.param_groups:
                    group["lr"] = poly_lr(run.optim.lr, step, tr.steps, run.optim.poly_power)
                loss = loss_fn(net(images).float(), masks)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                last = loss.item()
                if state is not None:
                    signal: float | None = last
                    if run.loss.tilt_signal == "class":
                        sums, counts = class_ce(loss_fn.pixel_ce, masks, cls).tolist()
                        signal = sums / counts if counts > 0 else None
                    if signal is not None:
                        state.update(cls, signal)
                step += 1
        val = DataLoader(self.val_ds, batch_size=8, shuffle=False, num_workers=0)
        cm = evaluate_confusion(net, val, num_classes, device)
        m = evaluation_metrics(cm, tuple(self.train_ds.class_names), run.objectives)
        return {"miou": float(m["miou"]), "worst_iou": float(m["worst_iou"]), "iou_std": float(m["iou_std"]), "train_loss": last}
