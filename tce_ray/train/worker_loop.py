"""One worker of a training run: Ray Train's ``train_loop_per_worker``, as named steps.

``tce_ray.train.trainer.build_trainer`` hands :func:`train_loop_per_worker` to a ``TorchTrainer``;
every worker runs it::

    w = setup_worker(config)               # data, loss, model, optimizer, restore, weights, loaders
    until run.train.steps:
        loss, lr = train_step(w, batch, step)   # forward, loss, backward, the tilt report
        clock.tick(loss)                       # step times (StepClock)
        every eval_every steps and at the end:
            evaluate_and_report(w, step, lr, clock)   # evaluation, metrics, checkpoint

- data: ``build_dataset`` with ``run.data`` (train: crop / scale / augmentation; val: none);
  ordinary losses shuffle with a ``DistributedSampler`` (``set_epoch`` every epoch);
  ``tce_stochastic`` draws batches with a ``TiltedBatchSampler`` (one per worker, seeded
  with ``(seed, rank, start step)``) whose weight source is a
  :class:`~tce_ray.train.weights_actor.WeightClient`; after each step the worker reports
  ``(class, signal)`` without blocking (signal: the batch MCCE, or the CE over the drawn
  class's pixels with ``tilt_signal="class"``): :class:`TiltFeedback`.
- model: ``deeplabv3plus`` wrapped by ``ray.train.torch.prepare_model`` (DDP over gloo on
  CPU, NCCL on GPU); SGD with momentum and weight decay, poly schedule
  ``lr = lr0 * (1 - step/steps) ** power``; on CUDA with ``run.train.amp``, autocast in
  bf16 (fp16 + GradScaler where bf16 is not supported). Step-based: ``run.train.steps``
  steps, as many epochs as that takes.
- every ``eval_every`` steps and at the last step: distributed evaluation
  (``tce_ray.train.evaluation``), then ``ray.train.report(metrics, checkpoint)`` on every worker,
  the checkpoint (``tce_ray.train.checkpointing``) from rank 0 only.
- restore: ``ray.train.get_checkpoint()``; rank 0 loads the checkpoint's class-weight state
  into the actor before anything trains (then a barrier), and the run continues to exactly
  ``run.train.steps``. Restored from the checkpoint of the last step, nothing is trained:
  the restored model is evaluated and reported once (:func:`report_restored_end`).
- a non-finite loss raises :class:`NonFiniteLossError` naming the step; it also leaves a
  marker file in the run's state directory so that the restarts Ray Train makes
  (``max_failures``; Ray Train V2 offers no hook to mark an error as not retryable) fail at
  once instead of training again.

How stale the sampled weights may be is documented in ``tce_ray.train.weights_actor`` and
measured in the ``weights_age_steps_max`` / ``weights_lag_bound_steps`` metrics.

Reported metrics (every evaluation): ``step``, ``epoch``, ``loss`` (mean training loss
over all workers since the previous report), ``lr``, ``miou``, each objective of
``run.objectives`` by name, ``fairness/<key>``, ``iou/<class>`` (fraction, NaN if absent),
``images_per_s`` (all workers), ``step_time_s`` (median step time on rank 0 since the
previous report, data wait included), ``step_time_median_s`` (median over every step of
this attempt but its first; ``steps_timed`` of them), ``world_size``, ``restored_from_step``
(-1 for a fresh start) and, for stochastic
TCE: ``weights/<class>``, ``weight_updates``, ``weight_state_hash`` (of the checkpointed
state), ``restored_weight_hash`` (of the actor's state right after the restore),
``weights_age_steps_max`` and ``weights_lag_bound_steps`` (see ``tce_ray.train.weights_actor``),
``tilt_reports_skipped``, ``tilt_reports_dropped`` and ``actor_errors``: these counters are
reduced over all workers before the report (sums; the age and the bound: the maximum over
workers), :func:`tilt_counters`; for every class-drawn run (stochastic TCE, rare-class
sampling): ``drawn_class_missing``, the share of the images of class-drawn batches whose
training crop holds no pixel of the drawn class (all workers, this attempt).

Debug options (TEST-ONLY, ``config["debug"]``, passed as ``debug=`` to
``build_trainer`` / ``run_training``): :class:`FaultInjection`. Without them the loop's
hooks are :data:`NO_HOOKS`, which do nothing.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tce_ray.train.checkpointing import CHECKPOINT_FORMAT, load_training_state, save_training_state
from tce_ray.train.confusion_io import save_confusion
from tce_ray.data import build_splits
from tce_ray.train.evaluation import (
    all_reduce_counters, all_reduce_sum, evaluate_confusion, evaluation_metrics, loader_process_options, make_val_loader,
)
from tce_ray.train.live_metrics import LiveMetrics
from tce_ray.core.losses import class_ce
from tce_ray.models import deeplabv3plus
from tce_ray.train.run_state import RunState, cached_class_index
from tce_ray.train.runspec import RunSpec
from tce_ray.train.stall_watchdog import StallWatchdog, stall_key
from tce_ray.data.sampling import ClassIndex, StaticClassWeights, TiltedBatchSampler, rare_class_probabilities
from tce_ray.core.class_tilt import ClassTiltState, state_from_dict
from tce_ray.core.tilt import TiltState
from tce_ray.train.weights_actor import WeightClient, call_with_retry, find_weight_actor, state_hash

logger = logging.getLogger(__name__)

FATAL_MARKER = "FATAL_NONFINITE_LOSS.json"
PREFETCH_FACTOR = 2
LIVE_WEIGHTS_PERIOD_S = 1.0  # the class-weight gauges are refreshed at most this often


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the run is stopped, not retried)."""


def worker_pid_key(rank: int) -> str:
    """Key (in the run's state) of the file naming the current attempt's worker ``rank``:
    JSON ``{"pid", "node_id", "time"}`` (for fault-injection tests)."""
    return f"pids/rank{int(rank)}.pid"


def read_worker_pid(state_dir: str | RunState, rank: int) -> dict[str, Any] | None:
    """``{"pid", "node_id", "time"}`` of worker ``rank``'s current attempt, None before it started."""
    files = state_dir if isinstance(state_dir, RunState) else RunState(state_dir)
    return files.read_json(worker_pid_key(rank))


def build_datasets(run: RunSpec):
    """The training set (crop / scale / augmentation) and the validation set (no augmentation)."""
    d = run.data
    train, val = build_splits(d)
    if train.num_classes != val.num_classes or tuple(train.class_names) != tuple(val.class_names):
        raise ValueError(
            f"train split {d.train_split!r} has classes {train.class_names} but val split {d.val_split!r} has "
            f"{val.class_names}; both must use the same class list"
        )
    return train, val


def poly_lr(lr0: float, step: int, steps: int, power: float) -> float:
    """``lr0 * (1 - step/steps) ** power`` (the DeepLabv3+ poly schedule); step in [0, steps]."""
    if not 0 <= step <= steps:
        raise ValueError(f"step must be in [0, {steps}], got {step}")
    return lr0 * (1.0 - step / steps) ** power


def initial_weight_state(run: RunSpec, num_classes: int, drawable: Sequence[int]) -> TiltState | ClassTiltState:
    """The run's fresh class-weight state: stochastic TCE's TiltState (uniform weights over the
    drawable classes) or, for the class tilt on the loss, an empty ClassTiltState."""
    from tce_ray.core.loss_catalog import CLASS_TILT_LOSSES

    loss = run.loss
    if loss.name in CLASS_TILT_LOSSES:
        cap = None if loss.weight_cap >= 1.0 else loss.weight_cap
        return ClassTiltState(
            num_classes, loss.t, loss.gamma, weight_floor=loss.weight_floor, signal=loss.class_signal, cap=cap
        )
    return TiltState(num_classes, loss.t, loss.gamma, drawable, weight_floor=loss.weight_floor)


# ----------------------------------------------------------------------------- test hooks
class StepHooks:
    """What the loop calls at two fixed points of every step. These do nothing; a test
    installs :class:`FaultInjection` through ``config["debug"]``."""

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """The loss of ``step`` (1-based), before the backward pass."""
        return loss

    def after_step(self, step: int) -> None:
        """Called when ``step`` (1-based) is done, before it is timed."""


NO_HOOKS = StepHooks()
DEBUG_OPTIONS = ("nan_at_step", "step_sleep_s", "stall_at_step", "stall_rank")


def check_debug_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, or ValueError naming the unknown keys."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DEBUG_OPTIONS))
    if unknown:
        raise ValueError(f"unknown debug option(s) {unknown}; known: {sorted(DEBUG_OPTIONS)}")
    return options


@dataclass(frozen=True)
class FaultInjection(StepHooks):
    """TEST-ONLY faults: ``nan_at_step`` makes the loss of that step (1-based) NaN;
    ``step_sleep_s`` sleeps after every step; ``stall_at_step`` makes an attempt that did
    not restore a checkpoint (``stall``) sleep up to 10 minutes after that step, so that a
    fault-injection test can kill a worker at a known point (or the stall watchdog end it);
    ``stall_rank``: only that rank stalls (default: every rank)."""

    nan_at_step: int | None = None
    step_sleep_s: float = 0.0
    stall_at_step: int | None = None
    stall_rank: int | None = None
    stall: bool = True
    rank: int = 0

    def loss(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        return loss + float("nan") if self.nan_at_step == step else loss

    def after_step(self, step: int) -> None:
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        if self.stall and self.stall_at_step == step and self.stall_rank in (None, self.rank):
            logger.warning("debug: rank %d stalls after step %d (waiting to be killed)", self.rank, step)
            time.sleep(600)


def make_hooks(options: dict[str, Any] | None, *, restored: bool, rank: int) -> StepHooks:
    """:data:`NO_HOOKS` without debug options, else a :class:`FaultInjection` for this attempt."""
    options = check_debug_options(options)
    return FaultInjection(**options, stall=not restored, rank=rank) if options else NO_HOOKS


# ----------------------------------------------------------------------------- small pieces
class Amp:
    """Autocast on CUDA only: bf16 where supported, else fp16 with a GradScaler."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.device = device
        self.dtype: torch.dtype | None = None
        if enabled and device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        return torch.autocast(device_type="cuda", dtype=self.dtype) if self.dtype is not None else nullcontext()

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()


def _seed_loader_worker(worker_id: int) -> None:  # DataLoader processes: numpy/random follow torch's seed
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _epoch_batches(sampler: DistributedSampler, batch_size: int, start_epoch: int, skip: int) -> Iterator[list[int]]:
    """Batches of every epoch from ``start_epoch`` on, forever; the first ``skip`` are left out."""
    epoch = start_epoch
    while True:
        sampler.set_epoch(epoch)
        idx = list(sampler)
        for b in range(len(idx) // batch_size):
            if skip > 0:
                skip -= 1
                continue
            yield idx[b * batch_size : (b + 1) * batch_size]
        epoch += 1


class _Batches:
    """A re-iterable batch sampler wrapping :func:`_epoch_batches` (one iterator per DataLoader)."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, start_epoch: int, skip: int) -> None:
        self._args = (sampler, batch_size, start_epoch, skip)

    def __iter__(self) -> Iterator[list[int]]:
        return _epoch_batches(*self._args)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class StepClock:
    """Step times of one attempt: wall and CPU time of every step, kept for the window since
    the last report (with the window's losses) and for the whole attempt. The first step of
    an attempt is not timed: it waits for the data loader to start."""

    def __init__(self) -> None:
        self.window_losses: list[float] = []
        self.window_times: list[float] = []
        self.attempt_times: list[float] = []
        self.attempt_cpu_times: list[float] = []  # this process's CPU time per step (all its threads)
        self._first = True
        self.restart()

    def restart(self) -> None:
        """Start timing the next step now."""
        self._t, self._cpu = time.perf_counter(), time.process_time()

    def tick(self, loss_value: float) -> float:
        """Close a step: keep its loss and (but for the first) its times; returns its wall time."""
        now, cpu_now = time.perf_counter(), time.process_time()
        dt, cpu_dt = now - self._t, cpu_now - self._cpu
        self._t, self._cpu = now, cpu_now
        self.window_losses.append(loss_value)
        if not self._first:
            self.window_times.append(dt)
            self.attempt_times.append(dt)
            self.attempt_cpu_times.append(cpu_dt)
        self._first = False
        return dt

    def metrics(self, images_per_step: int) -> dict[str, float]:
        """``images_per_s`` (``images_per_step`` over all workers), ``step_time_s`` (window median),
        ``step_time_median_s`` and ``steps_timed`` (the attempt)."""
        total = sum(self.window_times)
        return {
            "images_per_s": (images_per_step * len(self.window_times) / total) if total > 0 else float("nan"),
            "step_time_s": _median(self.window_times),
            "step_time_median_s": _median(self.attempt_times),
            "steps_timed": len(self.attempt_times),
        }

    def new_window(self) -> None:
        """After a report: an empty window, and the time spent evaluating is not step time."""
        self.window_losses, self.window_times = [], []
        self.restart()


# ----------------------------------------------------------------------------- non-finite loss
def _raise_if_marked_fatal(files: RunState) -> None:
    if files.exists(FATAL_MARKER):
        try:
            message = files.read_json(FATAL_MARKER)["message"]
        except (OSError, ValueError, KeyError, TypeError):
            message = f"non-finite loss (see {files.uri(FATAL_MARKER)})"
        raise NonFiniteLossError(f"{message} [not retried: an earlier attempt of this run hit it]")


def _fail_non_finite(files: RunState, value: float, step: int, rank: int, lr: float) -> None:
    message = (
        f"non-finite loss ({value}) at step {step} on worker rank {rank} (lr {lr:.3g}); "
        "the run diverged: lower optim.lr, enable gradient-friendly settings (e.g. a smaller t for TCE), "
        "or check the data for broken labels"
    )
    try:  # the marker stops Ray Train's retries; the error below is raised either way
        files.write_json(FATAL_MARKER, {"message": message, "step": step, "rank": rank})
    except OSError as e:
        logger.error("could not leave the non-finite-loss marker (%s); Ray Train may retry this run", e)
    raise NonFiniteLossError(message)


# ----------------------------------------------------------------------------- class draws
class ClassDraws:
    """A run whose batches are drawn by class (stochastic TCE, rare-class sampling): the class
    of each batch (from the sampler, in delivery order) and how many crops missed it."""

    def __init__(self, sampler: TiltedBatchSampler) -> None:
        self.sampler = sampler
        self.missing = torch.zeros((), dtype=torch.long)  # CPU: read at reports only
        self.images = 0

    def next_class(self, masks: torch.Tensor) -> int:
        """The class the batch ``masks`` (on the CPU, as the loader delivers it) was drawn for."""
        cls = self.sampler.pop_batch_class()
        self.missing += (masks != cls).flatten(1).all(1).sum()
        self.images += masks.shape[0]
        return cls

    def add_metrics(self, metrics: dict[str, Any], device: torch.device) -> None:
        """``drawn_class_missing`` over all workers (a collective)."""
        drawn = torch.tensor([float(self.missing), float(self.images)], dtype=torch.float64, device=device)
        all_reduce_sum(drawn)
        metrics["drawn_class_missing"] = float(drawn[0] / drawn[1]) if drawn[1] > 0 else float("nan")


# ----------------------------------------------------------------------------- stochastic TCE
class TiltFeedback:
    """Stochastic TCE on one worker: the class of each batch (from the sampler), the tilt
    signal reported after each step without blocking, the weight metrics at a report."""

    def __init__(
        self, run: RunSpec, client: WeightClient, sampler: TiltedBatchSampler, live: LiveMetrics, *,
        rank: int, class_names: tuple[str, ...], restored_hash: str, prefetch_depth: int,
    ) -> None:  # fmt: skip
        self.run, self.client, self.sampler, self.live = run, client, sampler, live
        self.rank, self.class_names = rank, class_names
        self.restored_hash, self.prefetch_depth = restored_hash, prefetch_depth
        self.skipped_reports = 0  # steps whose crop cut the drawn class out (tilt_signal="class")
        self._live_due = 0.0

    def batch_class(self) -> int:
        """The class the next batch was drawn for (the loop reads it through :class:`ClassDraws`)."""
        return self.sampler.pop_batch_class()

    def class_ce(self, loss_fn: nn.Module, masks: torch.Tensor, cls: int) -> torch.Tensor | None:
        """``[CE sum, pixels]`` of class ``cls`` for ``tilt_signal="class"`` (None for the batch
        signal), from the per-pixel CE the MCCE kept (``keep_pixel_ce``): no second pass."""
        if self.run.loss.tilt_signal != "class":
            return None
        return class_ce(loss_fn.pixel_ce, masks, cls)

    def after_step(self, cls: int, loss_value: float, cls_ce: torch.Tensor | None) -> None:
        """Report the step's signal for ``cls`` (skipped when the class has no pixel left)."""
        if cls_ce is None:
            signal: float | None = loss_value
        else:
            sums, counts = cls_ce.tolist()  # one sync
            signal = sums / counts if counts > 0 else None  # the crop may have cut the class out
        if signal is None:
            self.skipped_reports += 1
        else:
            self.client.report(cls, signal)
        self.client.step()
        if self.rank == 0 and time.monotonic() >= self._live_due:
            self.live.set_weights(self.client.weights)
            self._live_due = time.monotonic() + LIVE_WEIGHTS_PERIOD_S

    def add_metrics(self, metrics: dict[str, Any], step: int) -> dict | None:
        """At a report: deliver every report, then (rank 0) read the state to checkpoint and add
        the weight metrics to ``metrics``. Returns the state (rank 0; None elsewhere)."""
        client = self.client
        if not client.drain(timeout_s=60.0):
            logger.warning("rank %d: some tilt reports did not reach the actor before step %d's checkpoint", self.rank, step)
        _barrier()  # every rank's reports are in before rank 0 reads the state
        metrics.update(restored_weight_hash=self.restored_hash)
        metrics.update(tilt_counters(self.skipped_reports, client, self.prefetch_depth))
        if self.rank != 0:
            return None
        weight_state = call_with_retry(client.actor.state_dict)
        tilt = state_from_dict(weight_state)
        for c, w in zip(self.class_names, tilt.weights):
            metrics[f"weights/{c}"] = float(w)
        if isinstance(tilt, ClassTiltState):
            for c, r in zip(self.class_names, tilt.running_loss):
                metrics[f"class_loss/{c}"] = float(r)
        metrics["weight_updates"] = int(weight_state["num_updates"])
        metrics["weight_state_hash"] = state_hash(weight_state)
        return weight_state


class ClassTiltFeedback(TiltFeedback):
    """The class tilt on the loss on one worker: before each step the loss reads the cached
    class weights (:meth:`before_step`); after it the batch's per-class report
    (``loss_fn.last_report``: CE sums and counts, or confusion counts) goes to the run's state
    without blocking. The weights a step uses lag as stochastic TCE's sampling weights do
    (``tce_ray.train.weights_actor``) but without the loader's prefetch: ``L <= a_max``."""

    def before_step(self, loss_fn: nn.Module) -> None:
        """Give the loss the latest weights that have arrived (never waits)."""
        if getattr(self, "_weights_version", None) != self.client.version:
            loss_fn.set_class_weights(self.client.weights if self.client.version > 0 else None)
            self._weights_version = self.client.version
        else:
            self.client.weights  # noqa: B018 - picks up a landed reply, tracks the weights' age

    def class_ce(self, loss_fn: nn.Module, masks: torch.Tensor, cls: int | None) -> torch.Tensor | None:
        self._loss_fn = loss_fn
        return None

    def after_step(self, cls: int | None, loss_value: float, cls_ce: torch.Tensor | None) -> None:
        report = getattr(self._loss_fn, "last_report", None)
        if report is None:
            self.skipped_reports += 1
        else:
            self.client.report_stats(report.cpu().numpy())
        self.client.step()
        if self.rank == 0 and time.monotonic() >= self._live_due:
            self.live.set_weights(self.client.weights)
            self._live_due = time.monotonic() + LIVE_WEIGHTS_PERIOD_S


def tilt_counters(skipped_reports: int, client: Any, prefetch_depth: int) -> dict[str, int]:
    """The counters of stochastic TCE over ALL workers (a collective; every rank calls it at
    each report, so rank 0's metrics, the ones Ray Train keeps, hold the run's totals):
    ``tilt_reports_skipped`` (steps whose crop cut the drawn class out), ``tilt_reports_dropped``
    (reports lost to a full client buffer) and ``actor_errors``, summed; ``weights_age_steps_max``,
    the largest weight age ``a`` of any worker; ``weights_lag_bound_steps`` = that + ``P``
    (``prefetch_depth``), the bound on the lag ``L`` (see ``tce_ray.train.weights_actor``)."""
    c = all_reduce_counters(
        sums={"tilt_reports_skipped": int(skipped_reports), "tilt_reports_dropped": int(client.reports_dropped),
              "actor_errors": int(client.actor_errors)},
        maxes={"weights_age_steps_max": int(client.max_weight_age_steps)},
    )
    c["weights_lag_bound_steps"] = int(c["weights_age_steps_max"]) + int(prefetch_depth)
    return c


def _class_index(train_ds, cache_dir: str | None, rank: int) -> ClassIndex:
    """Rank 0 builds (or reads) the cached index first; the others then read its cache."""
    if rank == 0 or cache_dir is None:
        index = cached_class_index(train_ds, cache_dir) if cache_dir is not None else ClassIndex.build(train_ds)
    _barrier()
    if rank != 0 and cache_dir is not None:
        index = cached_class_index(train_ds, cache_dir)
    return index


def _connect_weights(
    run: RunSpec, run_name: str, state: dict | None, index: ClassIndex, num_classes: int, rank: int
) -> tuple[WeightClient, str]:
    """Rank 0 puts the checkpoint's class-weight state (or a fresh one) into the run's actor
    before anyone samples (barrier); every rank then gets a client. Returns the client and,
    on rank 0, the hash of the actor's state right after the restore."""
    actor = find_weight_actor(run_name)
    restored_hash = ""
    if rank == 0:
        if state and state["weight_state"] is not None:
            call_with_retry(actor.load_state_dict, state["weight_state"])
        else:  # a fresh start (also after a failure before the first checkpoint)
            fresh = initial_weight_state(run, num_classes, index.drawable(run.loss.min_pixels))
            call_with_retry(actor.load_state_dict, fresh.state_dict())
        restored_hash = state_hash(call_with_retry(actor.state_dict))
        logger.info(
            "class-weight state %s: actor state hash %s (checkpoint's: %s)",
            f"restored from the checkpoint of step {state['step']}" if state else "reset to uniform",
            restored_hash,
            state["weight_state_hash"] if state else "-",
        )
    _barrier()
    return WeightClient(run_name, sync_every=run.train.weight_sync_every, actor=actor), restored_hash


# ----------------------------------------------------------------------------- set-up
@dataclass
class Worker:
    """What one worker holds for one attempt of its run (built by :func:`setup_worker`)."""

    run: RunSpec
    rank: int
    world: int
    device: torch.device
    state_dir: RunState  # the run's state files, on its storage
    class_names: tuple[str, ...]
    loss_fn: nn.Module
    model: nn.Module  # what trains (DDP-wrapped with several workers)
    net: nn.Module  # the unwrapped module: evaluation and checkpoints
    optimizer: torch.optim.Optimizer
    amp: Amp
    start_step: int
    restored: bool  # this attempt resumed from a checkpoint
    steps_per_epoch: int
    loader: DataLoader
    val_loader: DataLoader
    live: LiveMetrics
    tilt: TiltFeedback | None  # stochastic TCE only
    hooks: StepHooks
    watchdog: StallWatchdog
    draws: ClassDraws | None = None  # batches drawn by class (stochastic TCE, rare-class sampling)
    confusion: torch.Tensor | None = None  # the latest evaluation's confusion matrix (saved with the checkpoint)


def setup_worker(config: dict[str, Any]) -> Worker:
    """Everything this worker trains with, from ``trainer_config``'s dict. The order is part of
    the contract: the model is initialised from ``seed``, then every random stream of the
    attempt is seeded from ``(seed, rank, start step)``."""
    from tce_ray.core.loss_catalog import STOCHASTIC
    from tce_ray.core.losses import make_loss, needs_class_index, needs_weight_actor

    run = RunSpec.model_validate(config["run"])
    tr = run.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    state_dir = RunState(config["state_dir"])
    _start_attempt(state_dir, rank, tr.cpus_per_worker)
    device = ray.train.torch.get_device()

    train_ds, val_ds = build_datasets(run)
    num_classes, class_names = train_ds.num_classes, tuple(train_ds.class_names)
    index = _class_index(train_ds, config.get("cache_dir"), rank) if needs_class_index(run) else None
    loss_fn = make_loss(run, num_classes, index).to(device)
    state = _load_checkpoint(tr.steps)
    start_step = int(state["step"]) if state else 0
    model, net, optimizer, amp = _build_model(run, num_classes, state, device)
    stream_seed = _seed_streams(tr.seed, rank, start_step)

    client, restored_hash = None, ""
    if needs_weight_actor(run):
        client, restored_hash = _connect_weights(run, config["run_name"], state, index, num_classes, rank)
    sampler_client = client if run.loss.name == STOCHASTIC else None  # the class tilt acts on the loss
    steps_per_epoch = _steps_per_epoch(len(train_ds), tr.batch_size, world)
    batch_sampler = _batch_sampler(
        run, train_ds, rank, world, start_step, steps_per_epoch, index=index, client=sampler_client
    )
    draws = ClassDraws(batch_sampler) if isinstance(batch_sampler, TiltedBatchSampler) else None
    loader = _train_loader(train_ds, batch_sampler, run.data.loader_workers, device, stream_seed)
    val_loader = make_val_loader(
        val_ds, rank, world, num_workers=min(run.data.loader_workers, 1), pin_memory=device.type == "cuda"
    )
    live = LiveMetrics(config["run_name"], rank, class_names)
    tilt = None
    if client is not None:
        feedback = TiltFeedback if sampler_client is not None else ClassTiltFeedback
        tilt = feedback(
            run, client, batch_sampler, live, rank=rank, class_names=class_names,
            restored_hash=restored_hash, prefetch_depth=PREFETCH_FACTOR * run.data.loader_workers,
        )  # fmt: skip
    return Worker(
        run=run, rank=rank, world=world, device=device, state_dir=state_dir, class_names=class_names,
        loss_fn=loss_fn, model=model, net=net, optimizer=optimizer, amp=amp,
        start_step=start_step, restored=state is not None, steps_per_epoch=steps_per_epoch,
        loader=loader, val_loader=val_loader, live=live, tilt=tilt,
        hooks=make_hooks(config.get("debug"), restored=state is not None, rank=rank), draws=draws,
        watchdog=StallWatchdog(state_dir, rank, tr.stall_timeout, run_name=config["run_name"]),
    )  # fmt: skip


def _start_attempt(files: RunState, rank: int, cpus: float) -> None:
    """Refuse to train after a non-finite loss; leave this worker's pid; use ``cpus`` threads."""
    _raise_if_marked_fatal(files)
    files.delete(stall_key(rank))  # a stall of an earlier attempt is not this one's
    files.write_json(
        worker_pid_key(rank),
        {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "time": time.time()},
    )
    torch.set_num_threads(max(1, int(cpus)))


def _load_checkpoint(steps: int) -> dict[str, Any] | None:
    """The training state Ray Train restores this attempt from, or None (a fresh start)."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        state = load_training_state(d)
    if int(state["step"]) > steps:
        raise ValueError(f"checkpoint is at step {int(state['step'])} but run.train.steps is {steps}")
    return state


def _build_model(
    run: RunSpec, num_classes: int, state: dict | None, device: torch.device
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, Amp]:
    """(model prepared by Ray Train, the unwrapped module, SGD, Amp), restored from ``state``."""
    torch.manual_seed(run.train.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    net = deeplabv3plus(num_classes, run.model.backbone, run.model.output_stride, run.model.backbone_weights)
    if state:
        net.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(net)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=run.optim.lr, momentum=run.optim.momentum, weight_decay=run.optim.weight_decay
    )
    amp = Amp(device, run.train.amp)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if amp.scaler is not None and state["scaler"] is not None:
            amp.scaler.load_state_dict(state["scaler"])
    return model, net, optimizer, amp


def _seed_streams(seed: int, rank: int, start_step: int) -> int:
    """Seed torch, numpy and random from ``(seed, rank, start step)``; returns that stream seed."""
    stream_seed = int(np.random.SeedSequence([seed, rank, start_step]).generate_state(1)[0])
    torch.manual_seed(stream_seed)
    np.random.seed(stream_seed)
    random.seed(stream_seed)
    return stream_seed


def _steps_per_epoch(num_images: int, batch_size: int, world: int) -> int:
    steps = num_images // (batch_size * world)
    if steps < 1:
        raise ValueError(
            f"the training set has {num_images} images, fewer than batch_size * num_workers = "
            f"{batch_size * world}; lower train.batch_size or train.num_workers"
        )
    return steps


def _batch_sampler(
    run: RunSpec, train_ds, rank: int, world: int, start_step: int, steps_per_epoch: int, *,
    index: ClassIndex | None, client: WeightClient | None,
) -> Any:  # fmt: skip
    """Stochastic TCE: a TiltedBatchSampler reading ``client``; rare-class sampling: the same
    sampler with fixed class probabilities; else shuffled epochs resumed at ``start_step``."""
    tr, sp = run.train, run.sampling
    if client is not None or sp.mode == "rare_class":
        source: Any = client
        if client is None:  # static rare-class sampling (DAFormer): fixed class probabilities
            drawable = index.drawable(run.loss.min_pixels)
            source = StaticClassWeights(rare_class_probabilities(index.pixel_frequencies(), sp.temperature, drawable))
        sampler = TiltedBatchSampler(
            index, source, tr.batch_size, num_batches=tr.steps - start_step,
            min_pixels=run.loss.min_pixels, seed=tr.seed, rank=rank,
            image_power=sp.image_power, class_crop=sp.class_crop,
        )  # fmt: skip
        sampler.set_epoch(start_step)  # a resumed attempt draws a fresh stream
        return sampler
    dist_sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tr.seed, drop_last=True)
    return _Batches(dist_sampler, tr.batch_size, start_step // steps_per_epoch, start_step % steps_per_epoch)


def _train_loader(train_ds, batch_sampler: Any, loader_workers: int, device: torch.device, stream_seed: int) -> DataLoader:
    return DataLoader(
        train_ds,
        batch_sampler=batch_sampler,
        num_workers=loader_workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_seed_loader_worker if loader_workers > 0 else None,
        prefetch_factor=PREFETCH_FACTOR if loader_workers > 0 else None,
        generator=torch.Generator().manual_seed(stream_seed),
        **loader_process_options(loader_workers),
    )


# ----------------------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one run on this worker (see the module docstring); returns a small summary."""
    w = setup_worker(config)
    tr = w.run.train
    step = w.start_step
    clock = StepClock()
    w.watchdog.start()
    if step >= tr.steps:  # restored from the checkpoint of the last step
        report_restored_end(w, clock)
    batches = iter(w.loader) if step < tr.steps else iter(())
    w.model.train()
    while step < tr.steps:
        images, masks = next(batches)
        loss_value, lr = train_step(w, images, masks, step)
        step += 1
        w.hooks.after_step(step)
        dt = clock.tick(loss_value)
        w.watchdog.beat(step, dt if step > w.start_step + 1 else None)  # the first step waits for the loader
        w.live.set_step(step, dt, tr.batch_size / dt)
        if step % tr.eval_every == 0 or step == tr.steps:
            evaluate_and_report(w, step, lr, clock)
    w.watchdog.stop()
    return {
        "step": step,
        "rank": w.rank,
        "start_step": w.start_step,
        "step_time_median_s": _median(clock.attempt_times),
        # every step of this attempt but its first, wall and CPU time (for benchmarks)
        "step_times_s": clock.attempt_times,
        "step_cpu_times_s": clock.attempt_cpu_times,
    }


def report_restored_end(w: Worker, clock: StepClock) -> None:
    """An attempt restored from the checkpoint of the run's last step has nothing left to
    train: the run had trained to the end, but its final report may never have reached Tune
    (the driver or the trial was killed between the checkpoint and the report). Evaluate the
    restored model and report once (with the same checkpoint), so that the trial completes
    with its final metrics instead of ending with none. ``loss`` and the step times of that
    report are NaN: no step ran in this attempt."""
    tr = w.run.train
    logger.info("restored from the checkpoint of the last step (%d): reporting its evaluation again", tr.steps)
    evaluate_and_report(w, tr.steps, poly_lr(w.run.optim.lr, tr.steps - 1, tr.steps, w.run.optim.poly_power), clock)


def train_step(w: Worker, images: torch.Tensor, masks: torch.Tensor, step: int) -> tuple[float, float]:
    """Optimiser step ``step + 1``: lr, forward, loss, backward; stochastic TCE reports its
    signal. Returns (loss, lr); a non-finite loss raises :class:`NonFiniteLossError`."""
    cls = w.draws.next_class(masks) if w.draws is not None else None
    images = images.to(w.device, non_blocking=True)
    masks = masks.to(w.device, non_blocking=True)
    lr = poly_lr(w.run.optim.lr, step, w.run.train.steps, w.run.optim.poly_power)
    for g in w.optimizer.param_groups:
        g["lr"] = lr
    if isinstance(w.tilt, ClassTiltFeedback):
        w.tilt.before_step(w.loss_fn)
    with w.amp.autocast():
        logits = w.model(images)
    logits = logits.float()
    loss = w.hooks.loss(w.loss_fn(logits, masks), step + 1)
    cls_ce = w.tilt.class_ce(w.loss_fn, masks, cls) if w.tilt is not None else None
    w.optimizer.zero_grad(set_to_none=True)
    w.amp.backward_step(loss, w.optimizer)
    loss_value = loss.item()  # the one sync per step
    if not math.isfinite(loss_value):
        _fail_non_finite(w.state_dir, loss_value, step + 1, w.rank, lr)
    if w.tilt is not None:
        w.tilt.after_step(cls, loss_value, cls_ce)
    return loss_value, lr


# ----------------------------------------------------------------------------- evaluate and report
def evaluate_and_report(w: Worker, step: int, lr: float, clock: StepClock) -> None:
    """Evaluate, add the weight metrics (stochastic TCE), report with a checkpoint, open a new window."""
    metrics = evaluate(w, step, lr, clock)
    if w.draws is not None:
        w.draws.add_metrics(metrics, w.device)
    w.live.set_iou(np.array([metrics[f"iou/{c}"] for c in w.class_names]))
    weight_state = w.tilt.add_metrics(metrics, step) if w.tilt is not None else None
    report(w, step, metrics, weight_state)
    w.watchdog.beat()
    clock.new_window()


def evaluate(w: Worker, step: int, lr: float, clock: StepClock) -> dict[str, Any]:
    """The metrics of the evaluation at ``step`` (a collective: every worker calls it)."""
    # BatchNorm running stats differ per rank (each saw its own batches): use rank 0's, as the checkpoint does
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in w.net.buffers():
            dist.broadcast(b, src=0)
    cm = evaluate_confusion(w.net, w.val_loader, len(w.class_names), w.device, autocast_dtype=w.amp.dtype,
                            on_batch=w.watchdog.beat)
    w.confusion = cm
    losses = clock.window_losses
    loss_sum = torch.tensor([sum(losses), float(len(losses))], dtype=torch.float64, device=w.device)
    all_reduce_sum(loss_sum)
    metrics: dict[str, Any] = {
        "step": step,
        "epoch": step / w.steps_per_epoch,
        "loss": float(loss_sum[0] / loss_sum[1]),
        "lr": lr,
    }
    try:
        metrics.update(evaluation_metrics(cm.cpu(), w.class_names, w.run.objectives))
    except ValueError as e:
        raise ValueError(f"evaluation at step {step} failed: {e}") from e
    metrics.update(clock.metrics(w.world * w.run.train.batch_size))
    metrics.update(restored_from_step=w.start_step if w.restored else -1, world_size=w.world)
    return metrics


def checkpoint_state(w: Worker, step: int, weight_state: dict | None) -> dict[str, Any]:
    """The training state of ``step`` (format: ``tce_ray.train.checkpointing``)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in w.net.state_dict().items()},
        "optimizer": w.optimizer.state_dict(),
        "scaler": w.amp.scaler.state_dict() if w.amp.scaler is not None else None,
        "rng": {"seed": w.run.train.seed, "step": step},
        "weight_state": weight_state,
        "weight_state_hash": state_hash(weight_state) if weight_state is not None else None,
        "run": w.run.model_dump(mode="json"),
    }


def report(w: Worker, step: int, metrics: dict[str, Any], weight_state: dict | None) -> None:
    """``ray.train.report`` on every rank (a barrier); the checkpoint from rank 0 only."""
    if w.rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    state = checkpoint_state(w, step, weight_state)
    with tempfile.TemporaryDirectory(prefix="tce-ckpt-") as d:
        save_training_state(d, state)
        if w.confusion is not None:
            save_confusion(d, w.confusion, w.class_names)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
