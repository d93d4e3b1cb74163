"""The study's Optuna searcher and where its Optuna study is kept **[Ray]**.

- ``optuna_storage:`` set (an RDB URL such as ``sqlite:///optuna.db``): that database;
- else, local storage: an Optuna journal file ``<storage>/<name>/optuna.journal``
  (``JournalStorage`` + ``JournalFileBackend``), which ``optuna.load_study`` and
  optuna-dashboard open during and after the study;
- else (remote storage, ``s3://...``): in memory, saved only inside Tune's searcher state
  (Optuna's journal needs a local file with file locks).

The objectives are named (``study.set_metric_names``: ``worst_iou``, ``iou_std`` instead of
"Objective 0/1"), the study carries the study file (``config``) and the package version as
user attributes, and each trial gets its per-class IoU (``iou/<class>``), ``miou``, the last
``step``, its settings (``settings``, as the progress lines write them), the Tune trial id
and, for a failed trial, ``error: true``. ``--resume`` continues through the same storage:
Tune restores the searcher (and with it the storage object, which reopens the journal).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tce_ray.study.guarded_search import GuardedOptunaSearch

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from tce_ray.study.config import StudyConfig
    from tce_ray.core.objectives import Objective

__all__ = ["JOURNAL_FILE", "journal_path", "describe_storage", "open_storage", "make_searcher", "RecordingOptunaSearch", "trial_user_attrs"]

logger = logging.getLogger(__name__)

from tce_ray.results.study_data import JOURNAL_FILE  # noqa: E402 - one name for the writer and load_study


def journal_path(cfg: StudyConfig) -> str | None:
    """``<storage>/<name>/optuna.journal`` for a local storage without ``optuna_storage``;
    None where the study is kept elsewhere (an RDB URL) or in memory (remote storage)."""
    from tce_ray.study.config import is_uri

    if cfg.optuna_storage or is_uri(cfg.storage):
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(cfg.storage)), cfg.name, JOURNAL_FILE)


def open_storage(cfg: StudyConfig) -> tuple[optuna.storages.BaseStorage, str]:
    """The Optuna storage of the study and a few words saying where it is."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if cfg.optuna_storage:
        return optuna.storages.RDBStorage(cfg.optuna_storage), cfg.optuna_storage
    path = journal_path(cfg)
    if path is None:
        return optuna.storages.InMemoryStorage(), "in memory (remote storage: kept in Tune's searcher state)"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return JournalStorage(JournalFileBackend(path)), path


def describe_storage(cfg: StudyConfig) -> str:
    """One line saying where the Optuna study is and how to open it."""
    path = journal_path(cfg)
    if path is not None:
        return f"Optuna study: {path} (browse it: optuna-dashboard {path})"
    if cfg.optuna_storage:
        return f"Optuna study: {cfg.optuna_storage} (browse it: optuna-dashboard {cfg.optuna_storage})"
    return "Optuna study: in memory (the storage is remote; set optuna_storage: to an RDB URL to browse it)"


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def trial_user_attrs(result: dict[str, Any] | None, config: dict[str, Any] | None, trial_id: str) -> dict[str, Any]:
    """What a finished trial records in Optuna beside its objectives: ``iou/<class>``,
    ``miou``, ``step`` (finite numbers only), ``settings`` (text), ``config`` (the trial's
    Tune config) and ``tune_trial_id``."""
    from tce_ray.study.tune_callbacks import _settings_text

    attrs: dict[str, Any] = {"tune_trial_id": trial_id}
    for k, v in (result or {}).items():
        if k.startswith("iou/") or k in ("miou", "step"):
            n = _number(v)
            if n is not None:
                attrs[k] = int(n) if k == "step" else n
    if config:
        attrs["settings"] = _settings_text(config, show_seed=True)
        attrs["config"] = config
    return attrs


class RecordingOptunaSearch(GuardedOptunaSearch):
    """``OptunaSearch`` that also records :func:`trial_user_attrs` on each Optuna trial
    before telling it, and (:class:`~tce_ray.study.guarded_search.GuardedOptunaSearch`) the front
    guard's constraint (picklable: Tune saves it with the experiment)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is not None:
            self.__dict__.setdefault("_tce_configs", {})[trial_id] = config
        return config

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials:
            try:
                attrs = trial_user_attrs(result, self.__dict__.get("_tce_configs", {}).get(trial_id), trial_id)
                if error:
                    attrs["error"] = True
                for k, v in attrs.items():
                    ot_trial.set_user_attr(k, v)
            except Exception as exc:  # noqa: BLE001 - never lose the trial's result over its annotations
                logger.warning("could not record the user attributes of trial %s in Optuna: %s", trial_id, exc)
        super().on_trial_complete(trial_id, result=result, error=error)


def make_searcher(cfg: StudyConfig, objs: Sequence[Objective]) -> tuple[RecordingOptunaSearch, str]:
    """The searcher over the study's space (a new Optuna study in :func:`open_storage`, its
    objectives named, the explicit trials queued) and where the Optuna study is kept."""
    import optuna

    from tce_ray import __version__
    from tce_ray.study.search_space import CONFIGURATION_ATTR, SearchSpace, build_sampler
    from tce_ray.study.errors import StudyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage, where = open_storage(cfg)
    sampler = build_sampler(cfg.search, len(objs))
    try:
        study = optuna.create_study(
            storage=storage, sampler=sampler, study_name=cfg.name, directions=[o.direction for o in objs],
        )
    except optuna.exceptions.DuplicatedStudyError:
        fix = (f"delete {where} (no Tune experiment is left to resume with it)" if journal_path(cfg)
               else "use --resume, another name, or delete it (optuna delete-study)")
        raise StudyError(f"the Optuna storage {where} already holds a study named {cfg.name!r}; {fix}") from None
    keys = [o.key for o in objs]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(keys)
    study.set_user_attr("tce_ray_version", __version__)
    study.set_user_attr("config", cfg.file_dict())
    SearchSpace.from_config(cfg).enqueue(study)
    modes = [o.mode for o in objs]  # Tune spells directions "max"/"min"
    searcher = RecordingOptunaSearch(
        space=SearchSpace.from_config(cfg), metric=keys if len(keys) > 1 else keys[0],
        mode=modes if len(keys) > 1 else modes[0], sampler=sampler, storage=storage, study_name=cfg.name,
        guard=cfg.guard(), configuration_attr=CONFIGURATION_ATTR,
    )
    return searcher, where
