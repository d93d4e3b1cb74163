"""Distributed training of one run, driver side: the trainer factory and ``run_training``.

``run_training(run, name=..., storage_path=...)`` is the entry point: for stochastic TCE it
creates the run's :data:`~tce_ray.weights_actor.ClassWeightActor`, builds a
``TorchTrainer`` (:func:`build_trainer`) and ``fit()``s it. Every worker runs
:func:`tce_ray.worker_loop.train_loop_per_worker` (data, model, the steps, evaluation,
checkpoints, restore, and the metrics it reports: see ``tce_ray.worker_loop``).

The run's state directory (:func:`run_state_dir`: weight snapshot, worker pid files, the
non-finite-loss marker) must be on a disk every node sees; on one machine it always is.

Debug options (TEST-ONLY, ``config["debug"]``, passed as ``debug=`` to
:func:`build_trainer` / :func:`run_training`): ``nan_at_step``, ``step_sleep_s``,
``stall_at_step`` (:class:`tce_ray.worker_loop.FaultInjection`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import ray
import ray.train
import ray.train.torch
from tce_ray.losses import STOCHASTIC, make_loss, needs_class_index, needs_weight_actor  # noqa: F401 - the worker loop's names
from tce_ray.ray_env import shipped_plugins
from tce_ray.registry import install_snapshot
from tce_ray.runspec import RunSpec
from tce_ray.sampling import ClassIndex
from tce_ray.weights_actor import actor_name, create_weight_actor
from tce_ray.worker_loop import FATAL_MARKER, build_datasets, check_debug_options, train_loop_per_worker

CHECKPOINTS_TO_KEEP = 3
CONTROLLER_FAILURE_LIMIT = 3
WEIGHT_SNAPSHOT = "class_weights.json"


# ----------------------------------------------------------------------------- paths
def run_state_dir(storage_path: str, name: str) -> Path:
    """The run's local directory for its weight snapshot, worker pid files and fatal marker.

    ``<storage_path>/<name>/tce_state`` for a local ``storage_path``; for a URI (``s3://``...)
    a folder under the system's temp directory (those files must be on a local disk).
    """
    if "://" in storage_path:
        return Path(tempfile.gettempdir()) / "tce_ray_state" / name
    return Path(storage_path) / name / "tce_state"


def class_index_cache_dir(storage_path: str) -> Path:
    """Where class indices are cached (shared by the runs of one storage path)."""
    env = os.environ.get("TCE_CACHE_DIR")
    if env:
        return Path(env)
    if "://" in storage_path:
        return Path(tempfile.gettempdir()) / "tce_ray_cache"
    return Path(storage_path) / ".class_index_cache"


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

    Creates the run's state directory and clears a non-finite-loss marker left by an
    earlier run of the same name. ``debug`` is TEST-ONLY (see the module docstring).
    """
    if not isinstance(run, RunSpec):
        raise TypeError(f"run must be a RunSpec, got {type(run).__name__}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    check_debug_options(debug)
    storage_path = _normalise_storage(storage_path)
    state_dir = run_state_dir(storage_path, name)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / FATAL_MARKER).unlink(missing_ok=True)
    return {
        "run": run.model_dump(mode="json"),
        "run_name": name,
        "state_dir": str(state_dir),
        "cache_dir": str(class_index_cache_dir(storage_path)),
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

    A snapshot left by an earlier run of the same name is deleted first unless the actor is
    alive (a checkpoint restore re-loads the checkpointed state anyway).
    """
    storage_path = _normalise_storage(storage_path)
    train_ds, _ = build_datasets(run)
    index = ClassIndex.build(train_ds, cache_dir=class_index_cache_dir(storage_path))
    snapshot = run_state_dir(storage_path, name) / WEIGHT_SNAPSHOT
    try:
        ray.get_actor(actor_name(name))
    except ValueError:
        snapshot.unlink(missing_ok=True)
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
    actor = start_weight_actor(run, name=name, storage_path=storage_path) if needs_weight_actor(run) else None
    try:
        trainer = build_trainer(run, name=name, storage_path=storage_path, callbacks=callbacks, debug=debug)
        return trainer.fit()
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
