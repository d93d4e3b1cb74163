"""Distributed training of one run: the per-worker loop, the trainer factory and ``run_training``.

``run_training(run, name=..., storage_path=...)`` is the entry point: for stochastic TCE it
creates the run's :data:`~tce_ray.weights_actor.ClassWeightActor`, builds a
``TorchTrainer`` (:func:`build_trainer`) and ``fit()``s it. Every worker runs
:func:`train_loop_per_worker`:

- data: ``build_dataset`` with ``run.data`` (train: crop / scale / augmentation; val: none);
  ordinary losses shuffle with a ``DistributedSampler`` (``set_epoch`` every epoch);
  ``tce_stochastic`` draws batches with a ``TiltedBatchSampler`` (one per worker, seeded
  with ``(seed, rank, start step)``) whose weight source is a
  :class:`~tce_ray.weights_actor.WeightClient`; after each step the worker reports
  ``(class, signal)`` without blocking (signal: the batch MCCE, or the CE over the drawn
  class's pixels with ``tilt_signal="class"``).
- model: ``deeplabv3plus`` wrapped by ``ray.train.torch.prepare_model`` (DDP over gloo on
  CPU, NCCL on GPU); SGD with momentum and weight decay, poly schedule
  ``lr = lr0 * (1 - step/steps) ** power``; on CUDA with ``run.train.amp``, autocast in
  bf16 (fp16 + GradScaler where bf16 is not supported). Step-based: ``run.train.steps``
  steps, as many epochs as that takes.
- every ``eval_every`` steps and at the last step: distributed evaluation
  (``tce_ray.evaluation``), then ``ray.train.report(metrics, checkpoint)`` on every worker,
  the checkpoint (``tce_ray.checkpointing``) from rank 0 only.
- restore: ``ray.train.get_checkpoint()``; rank 0 loads the checkpoint's class-weight state
  into the actor before anything trains (then a barrier), and the run continues to exactly
  ``run.train.steps``.
- a non-finite loss raises :class:`NonFiniteLossError` naming the step; it also leaves a
  marker file in the run's state folder so that the restarts Ray Train makes
  (``max_failures``; Ray Train V2 offers no hook to mark an error as not retryable) fail at
  once instead of training again.

The run's state folder (:func:`run_state_dir`: weight snapshot, worker pid files, the
non-finite-loss marker) and the class-index cache (:func:`class_index_cache_dir`) live on
the run's storage, next to its checkpoints (a local folder or a URI such as ``s3://...``,
read and written through :class:`~tce_ray.run_state.RunState`), so a process restarted on
another node finds them; nothing a run needs after a failure is on one node's disk.
How stale the sampled weights may be is documented in ``tce_ray.weights_actor`` and
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
``weights_age_steps_max`` and ``weights_lag_bound_steps`` (see ``tce_ray.weights_actor``),
``tilt_reports_skipped`` and ``actor_errors``.

Debug options (TEST-ONLY, ``config["debug"]``, passed as ``debug=`` to
:func:`build_trainer` / :func:`run_training`): ``nan_at_step: int`` makes the loss of that
step (1-based) NaN; ``step_sleep_s: float`` sleeps after every step; ``stall_at_step: int``
makes an attempt that did not restore a checkpoint sleep (up to 10 minutes) after that step,
so that a fault-injection test can kill a worker at a known point.
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
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tce_ray.checkpointing import CHECKPOINT_FORMAT, load_training_state, save_training_state
from tce_ray.data import build_dataset
from tce_ray.evaluation import all_reduce_sum, evaluate_confusion, evaluation_metrics, make_val_loader
from tce_ray.live_metrics import LiveMetrics
from tce_ray.losses import build_loss, focal_alpha_from_frequencies, per_class_ce
from tce_ray.models import deeplabv3plus
from tce_ray.run_state import RunState, cached_class_index, storage_join
from tce_ray.runspec import RunSpec
from tce_ray.sampling import ClassIndex, TiltedBatchSampler
from tce_ray.tilt import TiltState
from tce_ray.weights_actor import (
    WeightClient,
    actor_name,
    call_with_retry,
    create_weight_actor,
    find_weight_actor,
    state_hash,
)

logger = logging.getLogger(__name__)

STOCHASTIC = "tce_stochastic"
CHECKPOINTS_TO_KEEP = 3
CONTROLLER_FAILURE_LIMIT = 3
FATAL_MARKER = "FATAL_NONFINITE_LOSS.json"
WEIGHT_SNAPSHOT = "class_weights.json"
STATE_FOLDER = "tce_state"
CACHE_FOLDER = ".class_index_cache"
PREFETCH_FACTOR = 2


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the run is stopped, not retried)."""


# ----------------------------------------------------------------------------- paths
def run_state_dir(storage_path: str, name: str) -> str:
    """Location of the run's state files (weight snapshot, worker pid files, fatal marker):
    ``<storage_path>/<name>/tce_state``, a local path or a URI on the run's storage (open it
    with :class:`~tce_ray.run_state.RunState`)."""
    return storage_join(storage_path, name, STATE_FOLDER)


def class_index_cache_dir(storage_path: str) -> str:
    """Where class indices are cached, shared by the runs of one storage path:
    ``$TCE_CACHE_DIR`` if set, else ``<storage_path>/.class_index_cache`` (a local path or a URI)."""
    env = os.environ.get("TCE_CACHE_DIR")
    if env:
        return env
    return storage_join(storage_path, CACHE_FOLDER)


def worker_pid_key(rank: int) -> str:
    """Key (in the run's state) of the file naming the current attempt's worker ``rank``:
    JSON ``{"pid", "node_id", "time"}`` (for fault-injection tests)."""
    return f"pids/rank{int(rank)}.pid"


def read_worker_pid(state_dir: str | RunState, rank: int) -> dict[str, Any] | None:
    """``{"pid", "node_id", "time"}`` of worker ``rank``'s current attempt, None before it started."""
    files = state_dir if isinstance(state_dir, RunState) else RunState(state_dir)
    return files.read_json(worker_pid_key(rank))


# ----------------------------------------------------------------------------- builders
def build_datasets(run: RunSpec):
    """The training set (crop / scale / augmentation) and the validation set (no augmentation)."""
    d = run.data
    train = build_dataset(
        d.name, d.train_split, root=d.root, crop_size=d.crop_size, scale_range=tuple(d.scale_range), augment=True, **d.options
    )
    val = build_dataset(d.name, d.val_split, root=d.root, augment=False, **d.options)
    if train.num_classes != val.num_classes or tuple(train.class_names) != tuple(val.class_names):
        raise ValueError(
            f"train split {d.train_split!r} has classes {train.class_names} but val split {d.val_split!r} has "
            f"{val.class_names}; both must use the same class list"
        )
    return train, val


def needs_class_index(run: RunSpec) -> bool:
    """Stochastic TCE draws from D_c; focal's inverse-frequency alpha needs pixel frequencies."""
    return run.loss.name == STOCHASTIC or (run.loss.name == "focal" and run.loss.focal_alpha == "inverse_frequency")


def make_loss(run: RunSpec, num_classes: int, index: ClassIndex | None = None) -> nn.Module:
    """The run's loss module (``build_loss``), with focal's alpha resolved."""
    spec = run.loss
    if spec.name == "focal":
        if spec.focal_alpha == "inverse_frequency":
            if index is None:
                raise ValueError("focal_alpha='inverse_frequency' needs the class index of the training set")
            alpha = focal_alpha_from_frequencies(index.pixel_frequencies())
        elif spec.focal_alpha == "none":
            alpha = None
        else:
            if len(spec.focal_alpha) != num_classes:
                raise ValueError(f"loss.focal_alpha has {len(spec.focal_alpha)} values; the data set has {num_classes} classes")
            alpha = list(spec.focal_alpha)
        return build_loss("focal", alpha=alpha, gamma=spec.focal_gamma)
    if spec.name in ("tce_image", "tce_class"):
        return build_loss(spec.name, t=spec.t)
    return build_loss(spec.name)


def poly_lr(lr0: float, step: int, steps: int, power: float) -> float:
    """``lr0 * (1 - step/steps) ** power`` (the DeepLabv3+ poly schedule); step in [0, steps]."""
    if not 0 <= step <= steps:
        raise ValueError(f"step must be in [0, {steps}], got {step}")
    return lr0 * (1.0 - step / steps) ** power


def initial_weight_state(run: RunSpec, num_classes: int, drawable: Sequence[int]) -> TiltState:
    """The run's fresh TiltState (uniform weights over the drawable classes)."""
    return TiltState(num_classes, run.loss.t, run.loss.gamma, drawable, weight_floor=run.loss.weight_floor)


class _Amp:
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


# ----------------------------------------------------------------------------- the loop
@dataclass
class _Debug:
    nan_at_step: int | None = None
    step_sleep_s: float = 0.0
    stall_at_step: int | None = None

    @classmethod
    def parse(cls, d: dict | None) -> "_Debug":
        d = dict(d or {})
        known = {"nan_at_step", "step_sleep_s", "stall_at_step"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown debug option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


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


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one run on this worker (see the module docstring); returns a small summary."""
    run = RunSpec.model_validate(config["run"])
    run_name: str = config["run_name"]
    files = RunState(config["state_dir"])  # the run's state files, on its storage
    cache_dir = config.get("cache_dir")
    debug = _Debug.parse(config.get("debug"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    stochastic = run.loss.name == STOCHASTIC
    tr = run.train

    _raise_if_marked_fatal(files)
    files.write_json(
        worker_pid_key(rank),
        {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "time": time.time()},
    )
    torch.set_num_threads(max(1, int(tr.cpus_per_worker)))
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"

    # ---- data, loss, model, optimizer
    train_ds, val_ds = build_datasets(run)
    num_classes, class_names = train_ds.num_classes, tuple(train_ds.class_names)
    index = _class_index(train_ds, cache_dir, rank) if needs_class_index(run) else None
    loss_fn = make_loss(run, num_classes, index).to(device)

    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_training_state(d)
    start_step = int(state["step"]) if state else 0
    if start_step > tr.steps:
        raise ValueError(f"checkpoint is at step {start_step} but run.train.steps is {tr.steps}")

    torch.manual_seed(tr.seed)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    net = deeplabv3plus(num_classes, run.model.backbone, run.model.output_stride, run.model.backbone_weights)
    if state:
        net.load_state_dict(state["model"])
    model = ray.train.torch.prepare_model(net)
    net = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=run.optim.lr, momentum=run.optim.momentum, weight_decay=run.optim.weight_decay
    )
    amp = _Amp(device, tr.amp)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        if amp.scaler is not None and state["scaler"] is not None:
            amp.scaler.load_state_dict(state["scaler"])
    # every random stream of this attempt: from (seed, rank, start step)
    stream_seed = int(np.random.SeedSequence([tr.seed, rank, start_step]).generate_state(1)[0])
    torch.manual_seed(stream_seed)
    np.random.seed(stream_seed)
    random.seed(stream_seed)

    # ---- the class-weight state (stochastic TCE), then the training batches
    client: WeightClient | None = None
    restored_hash = ""
    if stochastic:
        client, restored_hash = _connect_weights(run, run_name, state, index, num_classes, rank)
    steps_per_epoch = len(train_ds) // (tr.batch_size * world)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set has {len(train_ds)} images, fewer than batch_size * num_workers = "
            f"{tr.batch_size * world}; lower train.batch_size or train.num_workers"
        )
    if stochastic:
        sampler = TiltedBatchSampler(
            index, client, tr.batch_size, num_batches=tr.steps - start_step,
            min_pixels=run.loss.min_pixels, seed=tr.seed, rank=rank,
        )
        sampler.set_epoch(start_step)  # a resumed attempt draws a fresh stream
        batch_sampler: Any = sampler
    else:
        sampler = None
        dist_sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=tr.seed, drop_last=True)
        batch_sampler = _Batches(dist_sampler, tr.batch_size, start_step // steps_per_epoch, start_step % steps_per_epoch)
    loader_workers = run.data.loader_workers
    loader = DataLoader(
        train_ds,
        batch_sampler=batch_sampler,
        num_workers=loader_workers,
        pin_memory=use_cuda,
        worker_init_fn=_seed_loader_worker if loader_workers > 0 else None,
        prefetch_factor=PREFETCH_FACTOR if loader_workers > 0 else None,
        generator=torch.Generator().manual_seed(stream_seed),
    )
    val_loader = make_val_loader(val_ds, rank, world, num_workers=min(loader_workers, 1), pin_memory=use_cuda)
    prefetch_depth = PREFETCH_FACTOR * loader_workers

    live = LiveMetrics(run_name, rank, class_names)
    live_weights_due = 0.0  # the class-weight gauges are refreshed at most once a second

    # ---- train
    step = start_step
    window_losses: list[float] = []
    window_times: list[float] = []
    attempt_times: list[float] = []
    attempt_cpu_times: list[float] = []  # this process's CPU time per step (all its threads)
    skipped_reports = 0
    data_iter = iter(loader)
    t_prev = time.perf_counter()
    cpu_prev = time.process_time()
    first_step = True
    model.train()
    while step < tr.steps:
        images, masks = next(data_iter)
        cls = sampler.pop_batch_class() if sampler is not None else None
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        lr = poly_lr(run.optim.lr, step, tr.steps, run.optim.poly_power)
        for g in optimizer.param_groups:
            g["lr"] = lr
        with amp.autocast():
            logits = model(images)
        logits = logits.float()
        loss = loss_fn(logits, masks)
        if debug.nan_at_step == step + 1:
            loss = loss + float("nan")
        class_ce = None
        if stochastic and run.loss.tilt_signal == "class":
            class_ce = per_class_ce(logits.detach(), masks, num_classes)
        optimizer.zero_grad(set_to_none=True)
        amp.backward_step(loss, optimizer)
        loss_value = loss.item()  # the one sync per step
        step += 1
        if not math.isfinite(loss_value):
            _fail_non_finite(files, loss_value, step, rank, lr)
        if client is not None:
            if class_ce is None:
                signal = loss_value
            else:
                sums, counts = class_ce[0][cls].item(), int(class_ce[1][cls].item())
                signal = sums / counts if counts > 0 else None  # the crop may have cut the class out
            if signal is None:
                skipped_reports += 1
            else:
                client.report(cls, signal)
            client.step()
            if rank == 0 and time.monotonic() >= live_weights_due:
                live.set_weights(client.weights)
                live_weights_due = time.monotonic() + 1.0
        if debug.step_sleep_s:
            time.sleep(debug.step_sleep_s)
        if debug.stall_at_step == step and state is None:
            logger.warning("debug: rank %d stalls after step %d (waiting to be killed)", rank, step)
            time.sleep(600)
        now, cpu_now = time.perf_counter(), time.process_time()
        dt, t_prev = now - t_prev, now
        cpu_dt, cpu_prev = cpu_now - cpu_prev, cpu_now
        window_losses.append(loss_value)
        if not first_step:  # the first step of an attempt waits for the loader to start
            window_times.append(dt)
            attempt_times.append(dt)
            attempt_cpu_times.append(cpu_dt)
        first_step = False
        live.set_step(step, dt, tr.batch_size / dt)

        if step % tr.eval_every == 0 or step == tr.steps:
            metrics = _evaluate(
                run=run,
                net=net,
                val_loader=val_loader,
                class_names=class_names,
                device=device,
                amp=amp,
                step=step,
                steps_per_epoch=steps_per_epoch,
                lr=lr,
                world=world,
                window_losses=window_losses,
                window_times=window_times,
                attempt_times=attempt_times,
                start_step=start_step if state else -1,
            )
            live.set_iou(np.array([metrics[f"iou/{c}"] for c in class_names]))
            weight_state = None
            if client is not None:
                weight_state = _weight_metrics(
                    metrics, client, run, class_names, rank, step,
                    restored_hash=restored_hash, prefetch_depth=prefetch_depth, skipped_reports=skipped_reports,
                )
            _report(metrics, rank, step, net, optimizer, amp, run, weight_state)
            window_losses, window_times = [], []
            t_prev, cpu_prev = time.perf_counter(), time.process_time()  # evaluation time is not step time

    return {
        "step": step,
        "rank": rank,
        "start_step": start_step,
        "step_time_median_s": _median(attempt_times),
        # every step of this attempt but its first, wall and CPU time (for benchmarks)
        "step_times_s": attempt_times,
        "step_cpu_times_s": attempt_cpu_times,
    }


def _weight_metrics(
    metrics: dict[str, Any],
    client: WeightClient,
    run: RunSpec,
    class_names: tuple[str, ...],
    rank: int,
    step: int,
    *,
    restored_hash: str,
    prefetch_depth: int,
    skipped_reports: int,
) -> dict | None:
    """Stochastic TCE at an evaluation: deliver every report, then (rank 0) read the state
    to checkpoint and add the weight metrics to ``metrics``. Returns the state (rank 0)."""
    if not client.drain(timeout_s=60.0):
        logger.warning("rank %d: some tilt reports did not reach the actor before step %d's checkpoint", rank, step)
    _barrier()  # every rank's reports are in before rank 0 reads the state
    metrics.update(
        restored_weight_hash=restored_hash,
        weights_age_steps_max=client.max_weight_age_steps,
        weights_lag_bound_steps=client.max_weight_age_steps + prefetch_depth,
        tilt_reports_skipped=skipped_reports,
        actor_errors=client.actor_errors,
    )
    if rank != 0:
        return None
    weight_state = call_with_retry(client.actor.state_dict)
    tilt = initial_weight_state(run, len(class_names), weight_state["drawable"])
    tilt.load_state_dict(weight_state)
    for c, w in zip(class_names, tilt.weights):
        metrics[f"weights/{c}"] = float(w)
    metrics["weight_updates"] = int(weight_state["num_updates"])
    metrics["weight_state_hash"] = state_hash(weight_state)
    return weight_state


def _evaluate(
    *,
    run: RunSpec,
    net: nn.Module,
    val_loader: DataLoader,
    class_names: tuple[str, ...],
    device: torch.device,
    amp: _Amp,
    step: int,
    steps_per_epoch: int,
    lr: float,
    world: int,
    window_losses: list[float],
    window_times: list[float],
    attempt_times: list[float],
    start_step: int,
) -> dict[str, Any]:
    # BatchNorm running stats differ per rank (each saw its own batches): use rank 0's, as the checkpoint does
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in net.buffers():
            dist.broadcast(b, src=0)
    cm = evaluate_confusion(net, val_loader, len(class_names), device, autocast_dtype=amp.dtype)
    loss_sum = torch.tensor([sum(window_losses), float(len(window_losses))], dtype=torch.float64, device=device)
    all_reduce_sum(loss_sum)
    metrics: dict[str, Any] = {
        "step": step,
        "epoch": step / steps_per_epoch,
        "loss": float(loss_sum[0] / loss_sum[1]),
        "lr": lr,
    }
    try:
        metrics.update(evaluation_metrics(cm.cpu(), class_names, run.objectives))
    except ValueError as e:
        raise ValueError(f"evaluation at step {step} failed: {e}") from e
    step_time = _median(window_times)
    total = sum(window_times)
    metrics.update(
        images_per_s=(world * run.train.batch_size * len(window_times) / total) if total > 0 else float("nan"),
        step_time_s=step_time,
        step_time_median_s=_median(attempt_times),
        steps_timed=len(attempt_times),
        restored_from_step=start_step,
        world_size=world,
    )
    return metrics


def _report(
    metrics: dict[str, Any],
    rank: int,
    step: int,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    amp: _Amp,
    run: RunSpec,
    weight_state: dict | None,
) -> None:
    """``ray.train.report`` on every rank (a barrier); the checkpoint from rank 0 only."""
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": amp.scaler.state_dict() if amp.scaler is not None else None,
        "rng": {"seed": run.train.seed, "step": step},
        "weight_state": weight_state,
        "weight_state_hash": state_hash(weight_state) if weight_state is not None else None,
        "run": run.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory(prefix="tce-ckpt-") as d:
        save_training_state(d, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


# ----------------------------------------------------------------------------- driver side
def _normalise_storage(storage_path: str | os.PathLike) -> str:
    storage_path = os.fspath(storage_path)
    return storage_path if "://" in storage_path else os.path.abspath(storage_path)


def trainer_config(
    run: RunSpec, *, name: str, storage_path: str, debug: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``train_loop_config`` of run ``name``: ``{"run", "run_name", "state_dir", "cache_dir", "debug"}``.

    Clears a non-finite-loss marker left by an earlier run of the same name in the run's
    state folder (on its storage). ``debug`` is TEST-ONLY (see the module docstring).
    """
    if not isinstance(run, RunSpec):
        raise TypeError(f"run must be a RunSpec, got {type(run).__name__}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    _Debug.parse(debug)
    storage_path = _normalise_storage(storage_path)
    state_dir = run_state_dir(storage_path, name)
    RunState(state_dir).delete(FATAL_MARKER)
    return {
        "run": run.model_dump(mode="json"),
        "run_name": name,
        "state_dir": state_dir,
        "cache_dir": class_index_cache_dir(storage_path),
        "debug": dict(debug or {}),
    }


def build_trainer(
    run: RunSpec,
    *,
    name: str,
    storage_path: str,
    callbacks: Sequence[Any] = (),
    debug: dict[str, Any] | None = None,
) -> ray.train.torch.TorchTrainer:
    """A ``TorchTrainer`` for ``run`` named ``name`` under ``storage_path``.

    ``run.train`` sets the workers (``num_workers``, ``use_gpu``, ``cpus_per_worker``) and
    ``max_failures``; the controller may fail :data:`CONTROLLER_FAILURE_LIMIT` times; the
    last :data:`CHECKPOINTS_TO_KEEP` checkpoints are kept. Stochastic TCE also needs the
    run's weight actor: use :func:`run_training`, or call :func:`start_weight_actor` first.
    """
    config = trainer_config(run, name=name, storage_path=storage_path, debug=debug)
    tr = run.train
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker={"CPU": tr.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=_normalise_storage(storage_path),
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(
                max_failures=tr.max_failures, controller_failure_limit=CONTROLLER_FAILURE_LIMIT
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=CHECKPOINTS_TO_KEEP),
        ),
    )


def start_weight_actor(run: RunSpec, *, name: str, storage_path: str) -> "ray.actor.ActorHandle":
    """Create run ``name``'s class-weight actor (stochastic TCE), drawable classes from the class index.

    Its snapshot goes to the run's state folder on the run's storage, where an actor
    restarted on another node reads it. A snapshot left by an earlier run of the same name
    is deleted first unless the actor is alive (a checkpoint restore re-loads the
    checkpointed state anyway).
    """
    storage_path = _normalise_storage(storage_path)
    train_ds, _ = build_datasets(run)
    index = cached_class_index(train_ds, class_index_cache_dir(storage_path))
    state_dir = run_state_dir(storage_path, name)
    snapshot = storage_join(state_dir, WEIGHT_SNAPSHOT)
    try:
        ray.get_actor(actor_name(name))
    except ValueError:
        RunState(state_dir).delete(WEIGHT_SNAPSHOT)
    return create_weight_actor(
        name,
        num_classes=train_ds.num_classes,
        t=run.loss.t,
        gamma=run.loss.gamma,
        drawable=index.drawable(run.loss.min_pixels),
        weight_floor=run.loss.weight_floor,
        snapshot_path=snapshot,
    )


def run_training(
    run: RunSpec,
    *,
    name: str,
    storage_path: str,
    callbacks: Sequence[Any] = (),
    debug: dict[str, Any] | None = None,
) -> ray.train.Result:
    """Train ``run`` to the end: the weight actor (stochastic TCE), the trainer, ``fit()``.

    Returns the ``Result`` (``result.metrics``: the last report); a failed run raises
    ``ray.train.TrainingFailedError`` (a non-finite loss: its message says
    "non-finite loss ... at step N"). The weight actor is killed at the end.
    """
    actor = start_weight_actor(run, name=name, storage_path=storage_path) if run.loss.name == STOCHASTIC else None
    try:
        trainer = build_trainer(run, name=name, storage_path=storage_path, callbacks=callbacks, debug=debug)
        return trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
