"""Distributed training of one run, driver side: the trainer factory and ``run_training``.

``run_training(run, name=..., storage_path=...)`` is the entry point: for stochastic TCE it
creates the run's :data:`~tce_ray.train.weights_actor.ClassWeightActor`, builds a
``TorchTrainer`` (:func:`build_trainer`) and ``fit()``s it. Every worker runs
:func:`tce_ray.train.worker_loop.train_loop_per_worker` (data, model, the steps, evaluation,
checkpoints, restore, and the metrics it reports: see ``tce_ray.train.worker_loop``).

The run's state folder (:func:`run_state_dir`: weight snapshot, worker pid files, the
non-finite-loss marker) and the class-index cache (:func:`class_index_cache_dir`) live on
the run's storage, next to its checkpoints (a local folder or a URI such as ``s3://...``,
read and written through :class:`~tce_ray.train.run_state.RunState`), so a process restarted on
another node finds them; nothing a run needs after a failure is on one node's disk.

Debug options (TEST-ONLY, ``config["debug"]``, passed as ``debug=`` to
:func:`build_trainer` / :func:`run_training`): ``nan_at_step``, ``step_sleep_s``,
``stall_at_step`` (:class:`tce_ray.train.worker_loop.FaultInjection`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import ray
import ray.train
import ray.train.torch
from tce_ray.core.losses import make_loss, needs_class_index, needs_weight_actor  # noqa: F401 - re-exported for the tests
from tce_ray.train.ray_env import shipped_plugins
from tce_ray.core.registry import install_snapshot
from tce_ray.train.run_state import RunState, cached_class_index, storage_join
from tce_ray.train.runspec import RunSpec
from tce_ray.train.stall_watchdog import STALLS, RunStalledError, read_stalls, stall_message
from tce_ray.train.weights_actor import actor_name, create_weight_actor
from tce_ray.train.worker_loop import (  # noqa: F401 - read_worker_pid: for the fault-injection tests
    FATAL_MARKER,
    build_datasets,
    check_debug_options,
    read_worker_pid,
    train_loop_per_worker,
)

CHECKPOINTS_TO_KEEP = 3
CONTROLLER_FAILURE_LIMIT = 3
WEIGHT_SNAPSHOT = "class_weights.json"
STATE_FOLDER = "tce_state"

logger = logging.getLogger(__name__)
CACHE_FOLDER = ".class_index_cache"


# ----------------------------------------------------------------------------- paths
def run_state_dir(storage_path: str, name: str) -> str:
    """Location of the run's state files (weight snapshot, worker pid files, fatal marker):
    ``<storage_path>/<name>/tce_state``, a local path or a URI on the run's storage (open it
    with :class:`~tce_ray.train.run_state.RunState`), so that a process restarted on another node
    finds them."""
    return storage_join(storage_path, name, STATE_FOLDER)


def class_index_cache_dir(storage_path: str) -> str:
    """Where class indices are cached, shared by the runs of one storage path:
    ``$TCE_CACHE_DIR`` if set, else ``<storage_path>/.class_index_cache`` (a local path or a URI)."""
    env = os.environ.get("TCE_CACHE_DIR")
    if env:
        return env
    return storage_join(storage_path, CACHE_FOLDER)


# ----------------------------------------------------------------------------- driver side
def _normalise_storage(storage_path: str | os.PathLike) -> str:
    storage_path = os.fspath(storage_path)
    return storage_path if "://" in storage_path else os.path.abspath(storage_path)


def trainer_config(
    run: RunSpec, *, name: str, storage_path: str, debug: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``train_loop_config`` of run ``name``: ``{"run", "run_name", "state_dir", "cache_dir",
    "debug", "plugins"}`` (``run``: the RunSpec's JSON dump; ``plugins``: the registry
    entries from outside the package, installed on each worker before the run is validated).

    Clears a non-finite-loss marker left by an earlier run of the same name in the run's
    state folder (on its storage). ``debug`` is TEST-ONLY (see the module docstring).
    """
    if not isinstance(run, RunSpec):
        raise TypeError(f"run must be a RunSpec, got {type(run).__name__}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    check_debug_options(debug)
    storage_path = _normalise_storage(storage_path)
    state_dir = run_state_dir(storage_path, name)
    files = RunState(state_dir)
    files.delete(FATAL_MARKER)
    for key in files.list(STALLS):  # an earlier run's stall records (its stack dumps stay)
        if key.endswith(".json"):
            files.delete(key)
    return {
        "run": run.model_dump(mode="json"),
        "run_name": name,
        "state_dir": state_dir,
        "cache_dir": class_index_cache_dir(storage_path),
        "debug": dict(debug or {}),
        "plugins": shipped_plugins(),
    }


def _train_loop_with_plugins(config: dict[str, Any]) -> dict[str, Any]:
    """The workers' entry point: the shipped registry entries first, then the loop."""
    install_snapshot(config.get("plugins"))
    return train_loop_per_worker(config)


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
        _train_loop_with_plugins,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=tr.num_workers, use_gpu=tr.use_gpu, resources_per_worker=worker_resources(run)
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


def worker_resources(run: RunSpec) -> dict[str, float]:
    """What each training worker holds: ``cpus_per_worker`` CPUs, and ``gpus_per_worker``
    GPUs (a fraction shares one GPU) with ``use_gpu``."""
    tr = run.train
    out = {"CPU": float(tr.cpus_per_worker)}
    if tr.use_gpu:
        out["GPU"] = float(tr.gpus_per_worker)
    return out


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
    "non-finite loss ... at step N"; a worker ended by the stall watchdog with no restart
    left: :class:`~tce_ray.train.stall_watchdog.RunStalledError` with one line instead).
    The weight actor is killed at the end.
    """
    actor = start_weight_actor(run, name=name, storage_path=storage_path) if needs_weight_actor(run) else None
    try:
        trainer = build_trainer(run, name=name, storage_path=storage_path, callbacks=callbacks, debug=debug)
        try:
            result = trainer.fit()
        except Exception as e:
            _raise_if_stalled(storage_path, name, e)
            raise
        if getattr(result, "error", None) is not None:
            _raise_if_stalled(storage_path, name, result.error)
        return result
    finally:
        if actor is not None:
            _final_snapshot(actor, name)
            ray.kill(actor, no_restart=True)


def _raise_if_stalled(storage_path: str, name: str, error: BaseException) -> None:
    """A run that failed because its stall watchdog ended a worker (in the last attempt):
    :class:`RunStalledError` with the one line instead of Ray's "worker died" error."""
    state = RunState(run_state_dir(_normalise_storage(storage_path), name))
    try:
        records = read_stalls(state)
    except Exception:  # noqa: BLE001 - Ray's own error stands
        return
    if records:
        raise RunStalledError(stall_message(name, records)) from error


def _final_snapshot(actor: "ray.actor.ActorHandle", name: str, timeout_s: float = 30.0) -> None:
    """Write the actor's last state to the run's storage before it is killed (the periodic
    snapshots can miss the last reports); a failure is logged, the run's result stands."""
    try:
        ray.get(actor.snapshot.remote(), timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - the run is over; a missing last snapshot is not an error
        logger.warning("final class-weight snapshot of run %s failed: %s", name, e)
