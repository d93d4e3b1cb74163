"""Experiment tracking from the study file: ``tracking: {mlflow: {...}, wandb: {...}}``.

Each entry becomes Ray Tune's own logger callback (``MLflowLoggerCallback``,
``WandbLoggerCallback``), with runs named by the trial's label and metrics against the
training ``step``. The packages are optional extras (``pip install 'tce-ray[mlflow]'``,
``'tce-ray[wandb]'``): :func:`check_tracking` runs before Ray starts and names the pip
command in one line when one is missing (``required: false`` skips that tracker with a
warning instead). TensorBoard needs no entry: :func:`tensorboard_callback` replaces Tune's
default TBX logger with one writing ``<storage>/<name>/tensorboard/<label> (<trial id>)/``.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["MlflowSpec", "WandbSpec", "TrackingSpec", "check_tracking", "tracking_callbacks", "tensorboard_callback",
           "trial_run_name", "PIP"]

PIP = {"mlflow": "pip install 'tce-ray[mlflow]'  (or: pip install mlflow)",
       "wandb": "pip install 'tce-ray[wandb]'  (or: pip install wandb)"}
"""The install command named when a tracker's package is missing."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    required: bool = True
    """False: a missing package skips this tracker with a warning instead of an error."""


class MlflowSpec(_Spec):
    """``MLflowLoggerCallback``'s settings."""

    tracking_uri: str | None = None
    """``sqlite:///mlflow.db`` (a local store; MLflow 3 refuses ``file:`` stores unless ``MLFLOW_ALLOW_FILE_STORE=true``), ``http://host:5000``; default: MLflow's own (``MLFLOW_TRACKING_URI``)."""
    experiment_name: str | None = None
    """Default: the study's name."""
    tags: dict[str, str] = Field(default_factory=dict)
    save_artifact: bool = False


class WandbSpec(_Spec):
    """``WandbLoggerCallback``'s settings (``mode: offline`` writes locally, no account)."""

    project: str | None = None
    """Default: the study's name."""
    group: str | None = None
    mode: str | None = None
    """``online``, ``offline`` or ``disabled`` (W&B's ``mode``)."""
    tags: list[str] = Field(default_factory=list)


class TrackingSpec(BaseModel):
    """The study's ``tracking`` section."""

    model_config = ConfigDict(extra="forbid")
    mlflow: MlflowSpec | None = None
    wandb: WandbSpec | None = None


def check_tracking(spec: TrackingSpec | None, *, installed: Any = None) -> list[str]:
    """Before Ray: the trackers that will run (names). Raises ValueError (one line, the pip
    command) for a missing package, unless that tracker has ``required: false`` (then a
    warning line is printed and it is left out). ``installed``: name -> bool, for tests."""
    import sys

    found = installed or (lambda name: importlib.util.find_spec(name) is not None)
    out = []
    for name in ("mlflow", "wandb"):
        entry = getattr(spec, name, None) if spec is not None else None
        if entry is None:
            continue
        if found(name):
            out.append(name)
        elif entry.required:
            raise ValueError(f"tracking.{name}: the {name} package is not installed; {PIP[name]}, "
                             f"or remove tracking.{name} (or set required: false to skip it)")
        else:
            print(f"warning: tracking.{name} skipped: the {name} package is not installed ({PIP[name]})", file=sys.stderr)
    return out


def trial_run_name(config: dict[str, Any], trial_id: str, show_seed: bool) -> str:
    """A trial's run name: its report label and id, ``mcce [#0] seed=1 (a1b2c3)``; no ``/``."""
    from tce_ray.results.tables import flatten_config, trial_label

    study = config.get("study") if isinstance(config.get("study"), dict) else {}
    row = {**flatten_config(config), "configuration": study.get("configuration", -1),
           "seed": study.get("seed", -1) if study.get("seed") is not None else -1}
    label = trial_label(row, with_seed=show_seed)
    return re.sub(r"[/\\]", "_", f"{label} ({trial_id})")


def _with_step(result: dict[str, Any]) -> dict[str, Any]:
    """The result with Tune's ``timesteps_total`` set to the training step: Tune's loggers
    plot against it (else against the report count)."""
    step = result.get("step")
    return {**result, "timesteps_total": int(step)} if isinstance(step, (int, float)) and step > 0 else result


def tracking_callbacks(spec: TrackingSpec | None, study_name: str, show_seed: bool, names: list[str]) -> list[Any]:
    """Tune logger callbacks for the trackers ``names`` (from :func:`check_tracking`)."""
    out = []
    if "mlflow" in names and spec is not None and spec.mlflow is not None:
        out.append(_mlflow_callback(spec.mlflow, study_name, show_seed))
    if "wandb" in names and spec is not None and spec.wandb is not None:
        out.append(_wandb_callback(spec.wandb, study_name, show_seed))
    return out


def _mlflow_callback(m: MlflowSpec, study_name: str, show_seed: bool) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class StudyMLflow(MLflowLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:
            if trial not in self._trial_runs:
                tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id}
                run = self.mlflow_util.start_run(tags=tags, run_name=trial_run_name(trial.config or {}, trial.trial_id, show_seed))
                self._trial_runs[trial] = run.info.run_id
            if not self.log_params_on_trial_end:
                self.mlflow_util.log_params(run_id=self._trial_runs[trial], params_to_log=trial.config)

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            super().log_trial_result(iteration, trial, _with_step(result))

    return StudyMLflow(m.tracking_uri, experiment_name=m.experiment_name or study_name, tags=dict(m.tags),
                       save_artifact=m.save_artifact)


def _wandb_callback(w: WandbSpec, study_name: str, show_seed: bool) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    class StudyWandb(WandbLoggerCallback):
        def _start_logging_actor(self, trial: Any, exclude_results: list, **kwargs: Any) -> None:
            kwargs["name"] = trial_run_name(trial.config or {}, trial.trial_id, show_seed)
            super()._start_logging_actor(trial, exclude_results, **kwargs)

    extra = {k: v for k, v in (("mode", w.mode), ("tags", w.tags or None)) if v is not None}
    return StudyWandb(project=w.project or study_name, group=w.group, **extra)


def tensorboard_callback(experiment_path: str, show_seed: bool) -> Any:
    """Tune's TBX logger (so Tune adds no default one) writing each trial's events to
    ``<experiment>/tensorboard/<label> (<id>)/`` against the training step; None without tensorboardX."""
    if importlib.util.find_spec("tensorboardX") is None:
        return None
    from ray.tune.logger import TBXLoggerCallback

    class StudyTensorBoard(TBXLoggerCallback):
        def log_trial_start(self, trial: Any) -> None:
            if trial in self._trial_writer:
                self._trial_writer[trial].close()
            trial.init_local_path()
            where = f"{trial.local_experiment_path}/tensorboard/{trial_run_name(trial.config or {}, trial.trial_id, show_seed)}"
            self._trial_writer[trial] = self._summary_writer_cls(where, flush_secs=30)
            self._trial_result[trial] = {}

        def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
            super().log_trial_result(iteration, trial, _with_step(result))

    return StudyTensorBoard()
