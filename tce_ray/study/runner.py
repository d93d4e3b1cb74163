"""Run a hyper-parameter study: Ray Tune + Optuna over TCE trainings, results and report.

CLI::

    python -m tce_ray.study studies/synthetic_fairness.yaml [--storage DIR] [--resume]
                            [--address ADDR] [--dashboard]

Python::

    from tce_ray.study.runner import run_study
    result = run_study("studies/smoke.yaml", storage="/tmp/res")
    result.trials      # pandas DataFrame, one row per trial
    result.pareto      # the non-dominated completed trials
    result.groups      # one row per configuration: mean and std over its seeds

How it runs (see RAY_NOTES.md for the Ray facts behind each choice):

- the YAML is validated first (:mod:`tce_ray.study.config`; Ray and the trainer are imported
  only afterwards); the objectives are resolved (:func:`tce_ray.core.objectives.resolve_objectives`);
- Ray (:mod:`tce_ray.train.ray_env`): an already initialised Ray is used as is; else
  ``--address`` / ``RAY_ADDRESS`` connects to a cluster; else a local Ray starts with its
  dashboard process, the UI bound to 127.0.0.1;
- one Tune *function* trial per sample: it gets the base :class:`RunSpec` (and the
  registry entries registered outside the package), merges the trial's values into it
  once (:func:`tce_ray.study.search_space.trial_run`) and calls
  ``tce_ray.train.trainer.run_training`` (a ``TorchTrainer`` whose reports reach Tune through a
  ``TuneReportCallback``). The trial itself holds no CPU (a 1-byte ``memory`` bundle, as
  Tune needs a non-empty one): the trainer's workers request ``train.num_workers`` x
  ``train.cpus_per_worker`` CPUs (and a GPU each with ``train.use_gpu``);
  ``resources.max_concurrent_trials`` defaults to what the cluster fits;
- ``OptunaSearch`` with the define-by-run space of :mod:`tce_ray.study.search_space`, metric and
  mode lists for several objectives; the Optuna study in ``<storage>/<name>/optuna.journal``
  (or ``optuna_storage``; in memory for remote storage), see :mod:`tce_ray.study.optuna_store`; the explicit configurations are enqueued first (with
  ``search.seeds``: once per (configuration, seed), seed by seed; the seed becomes that
  trial's ``train.seed``; sampled trials run with the base ``train.seed``);
- a failed trial (an error, a non-finite loss or objective) is recorded with status
  ``failed``, its error in one line (``error``) and its full traceback in
  ``trial_<id>/error.txt`` (``error_file``), and the study goes on (Tune
  ``FailureConfig(max_failures=0)``); the end summary lists the failed trials;
- ``--resume`` restores the Tune experiment (``Tuner.restore``; the searcher's state, the
  Optuna study included, comes with it): finished trials are not run again, unfinished
  ones continue from their last Train checkpoint, errored ones stay failed. It holds after
  a hard kill too (:mod:`tce_ray.study.resume`): a trial's final record replaces a re-run of a
  trial Tune had not yet saved as finished, every report is kept on the storage as it
  arrives (:mod:`tce_ray.study.trial_history`), Tune's saved state is checked first (a file cut
  by the kill: the previous state; a state pickled by an older tce-ray: one line);
- progress lines and the report callback: :mod:`tce_ray.study.tune_callbacks`;
- at the end: ``trials.parquet``, ``history.parquet``, ``pareto.parquet``, ``study.json``,
  ``groups.parquet`` (mean ± std over the seeds of each configuration), ``report.md`` and
  ``plots/`` in ``<storage>/<name>/`` (:mod:`tce_ray.results.tables`, :mod:`tce_ray.results.report`).

The CLI is :mod:`tce_ray.cli`. Exit codes: 0 done (failed trials are reported, not fatal),
2 invalid study or arguments, 1 the study could not run.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tce_ray.results.study_data import StudyResult
from tce_ray.study.errors import ConfigError, StudyError
from tce_ray.study.config import StudyConfig, is_uri, load_config, parse_config
from tce_ray.core.objectives import Objective, resolve_objectives
from tce_ray.train.runspec import RunSpec
from tce_ray.train.uri_credentials import move_uri_credentials

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from ray import tune

__all__ = ["run_study", "preflight_study", "StudyResult", "StudyError", "resolve_objectives", "build_scheduler", "write_study_results"]

RUNS_DIR = "runs"
"""Train runs of the trials live in ``<storage>/<name>/runs/<trial_id>``."""


# --------------------------------------------------------------------------- a trial


@dataclass
class _TrialSetup:
    """What every trial gets (pickled into the Tune trainable): the base run, the study's
    objectives, where runs go, and the registry entries from outside the package."""

    base_run: RunSpec
    objectives: list[Objective]
    runs_storage: str
    plugins: list[Any]


def _trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """A Tune function trial: the trial's RunSpec (one merge), ``run_training``, a final check."""
    from ray import tune

    from tce_ray.core.registry import install_snapshot
    from tce_ray.study.search_space import trial_run
    from tce_ray.train.trainer import run_training
    from tce_ray.study.tune_callbacks import finite, make_report_callback, with_objectives

    from tce_ray.study.resume import read_final, write_final

    trial_id = tune.get_context().get_trial_id()
    done = read_final(setup.runs_storage, trial_id)
    if done is not None:  # finished before a hard kill, restarted by the resume: report, do not train
        tune.report(done)
        return
    install_snapshot(setup.plugins)  # before the run is validated here and on the workers
    run = trial_run(setup.base_run, config)
    result = run_training(
        run, name=trial_id, storage_path=setup.runs_storage,
        callbacks=[make_report_callback(setup.objectives)],
    )
    if getattr(result, "error", None) is not None:
        raise result.error
    final = with_objectives(dict(result.metrics or {}), setup.objectives)
    bad = [o.key for o in setup.objectives if not finite(final.get(o.key))]
    if bad:
        raise RuntimeError(
            f"objective(s) {', '.join(bad)} not finite at step {final.get('step')}: "
            f"{ {n: final.get(n) for n in bad} } (all classes absent, or a diverged run)"
        )
    write_final(setup.runs_storage, trial_id, final)  # what a resume reports if Tune did not see the end


# --------------------------------------------------------------------------- the study


def _coerce_config(config: StudyConfig | str | os.PathLike[str] | dict[str, Any]) -> StudyConfig:
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a StudyConfig, a YAML path or a dict, got {type(config).__name__}")


def _modes(objectives: Sequence[Objective]) -> dict[str, str]:
    """Metric key -> "max"/"min": what Tune and the result files take."""
    return {o.key: o.mode for o in objectives}


def run_study(
    config: StudyConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    objectives: Sequence[Any] | None = None,
    storage: str | os.PathLike[str] | None = None,
    resume: bool = False,
    address: str | None = None,
    dashboard: bool = False,
    progress: bool | str = True,
    callbacks: Sequence[Any] | None = None,
    check: bool = True,
    force_unlock: bool = False,
    connect_timeout_s: float | None = None,
    file: str | os.PathLike[str] | None = None,
) -> StudyResult:
    """Run (or with ``resume=True`` continue) a study; returns its tables and paths.

    ``objectives`` overrides the config's: registry names, ``"module:function"`` or
    :class:`~tce_ray.core.objectives.Objective` objects (registered on the fly; objectives the
    workers cannot import are computed from each report's ``iou/<class>`` values).
    ``storage`` overrides ``config.storage``. ``progress``: True (trial and study progress
    with ETA and the best so far), ``"terse"`` (one line per trial event) or False.
    ``callbacks``: more Tune callbacks (``ray.tune.Callback``: MLflow, W&B, your own), given
    to Tune with the progress one (a new study; ``resume`` restores those of the first run).
    Before Ray starts: ``check`` runs :func:`tce_ray.study.preflight.preflight` (``file``: the
    study file, for line numbers; default: ``config`` when it is a path), then the study
    folder is locked (:mod:`tce_ray.study.study_lock`; ``force_unlock`` replaces a lock object
    another study left on remote storage). ``connect_timeout_s``: how long a cluster
    ``address`` is waited for. Raises :class:`ConfigError` for an invalid study (a
    :class:`~tce_ray.study.preflight.PreflightError` when a trial could not work) and
    :class:`StudyError` when it cannot run as asked.
    """
    cfg = _coerce_config(config)
    storage = os.fspath(storage) if storage is not None else cfg.storage
    storage = move_uri_credentials(storage)  # s3://KEY:SECRET@...: to the environment, never into Ray's files
    cfg = cfg.model_copy(update={"storage": storage if is_uri(storage) else os.path.abspath(os.path.expanduser(storage))})
    objs = resolve_objectives(list(objectives) if objectives is not None else cfg.run.objectives)
    if cfg.scheduler and cfg.scheduler.asha and cfg.scheduler.asha.metric not in _modes(objs):
        raise ConfigError(f"{cfg.scheduler.asha.metric!r} is not one of the objectives {list(_modes(objs))}", path="scheduler.asha.metric")
    # before Ray: a missing MLflow / W&B package is one line (the preflight checks it first)
    trackers = (preflight_study(cfg, file if file is not None else (config if isinstance(config, (str, os.PathLike)) else None),
                                address, progress) if check else tracking_names(cfg))
    lock = _lock_study_folder(cfg, force_unlock)
    try:
        return _run_locked(cfg, objs, resume=resume, address=address, dashboard=dashboard, progress=progress,
                           connect_timeout_s=connect_timeout_s, callbacks=callbacks, trackers=trackers)
    finally:
        lock.release()


def tracking_names(cfg: StudyConfig) -> list[str]:
    """The study's trackers that will run (:func:`tce_ray.study.tracking.check_tracking`);
    a missing package raises ConfigError naming the pip command."""
    from tce_ray.study.tracking import check_tracking

    try:
        return check_tracking(cfg.tracking)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def preflight_study(cfg: StudyConfig, file: Any, address: str | None, progress: bool | str) -> list[str]:
    """:func:`tce_ray.study.preflight.preflight` as a study runs it (no Ray; ``--dry-run`` too):
    raises PreflightError, prints its warnings and (with ``progress``) its summary. Returns the
    trackers that will run (:func:`tracking_names`, checked first)."""
    from tce_ray.study.preflight import preflight, verify_cache_dir
    from tce_ray.train.run_state import storage_join

    trackers = tracking_names(cfg)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    rep = preflight(cfg, file=os.fspath(file) if file is not None else None, address=address,
                    cache_dir=verify_cache_dir(storage_join(cfg.experiment_path(), RUNS_DIR)), progress=say)
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if progress:
        print(rep.summary())
    return trackers


def _lock_study_folder(cfg: StudyConfig, force: bool) -> Any:
    """One writer per study folder (:func:`tce_ray.study.study_lock.acquire_study_lock`); a study
    already running there (or a folder that cannot be used) raises StudyError."""
    from tce_ray.study.study_lock import StudyLockError, acquire_study_lock

    try:
        return acquire_study_lock(cfg.experiment_path(), force=force)
    except StudyLockError as exc:
        raise StudyError(str(exc)) from None


def _run_locked(cfg: StudyConfig, objs: list[Objective], *, resume: bool, address: str | None, dashboard: bool,
                progress: bool | str, connect_timeout_s: float | None, callbacks: Sequence[Any] | None = None,
                trackers: Sequence[str] = ()) -> StudyResult:
    """The study once its folder is locked: Ray, the tuner, ``fit()``, the result files."""
    _failed_start(cfg, resume)  # before Ray: a start that died left nothing to wait for Ray over
    from tce_ray.train.ray_env import DEFAULT_CONNECT_TIMEOUT_S, ClusterUnreachable, cluster_problem, ensure_ray, pickle_by_value, shipped_plugins

    try:  # an unreachable cluster address fails here, before Ray is even imported
        local = ensure_ray(address, dashboard, quiet=progress is not True,
                           connect_timeout_s=DEFAULT_CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s)
    except ClusterUnreachable as exc:
        raise StudyError(str(exc)) from None
    from ray import tune

    from tce_ray.study.tune_callbacks import progress_callback

    problem = cluster_problem(cfg.run.train)
    if problem and local:
        raise StudyError(problem)
    if problem:
        print(f"warning: {problem} (waiting for the cluster to grow)", file=sys.stderr)
    pickle_by_value(o.fn.__module__ for o in objs if not o.by_workers)
    # the workers compute the importable objectives by key; the rest come from the report callback
    base_run = cfg.run.model_copy(update={"objectives": [o.key for o in objs if o.by_workers] or ["miou"]})
    from tce_ray.train.run_state import storage_join

    setup = _TrialSetup(base_run, objs, storage_join(cfg.experiment_path(), RUNS_DIR), shipped_plugins())
    trainable = tune.with_resources(
        tune.with_parameters(_trial, setup=setup), tune.PlacementGroupFactory([{"memory": 1}])
    )
    total = cfg.search.total_trials()
    callbacks = [
        *([progress_callback(list(_modes(objs)), total, show_seed=bool(cfg.search.seeds), modes=_modes(objs),
                             steps=cfg.run.train.steps, terse=progress == "terse",
                             experiment_path=cfg.experiment_path())] if progress else []),
        *_tracking(cfg, list(trackers)),
        *(callbacks or []),
    ]
    tuner = _restore_tuner(cfg, trainable, progress) if resume else _new_tuner(cfg, trainable, objs, callbacks, progress)
    result = write_study_results(tuner.fit(), cfg, _modes(objs))
    if progress:
        _print_summary(result, total)
    return result


def _tracking(cfg: StudyConfig, trackers: list[str]) -> list[Any]:
    """TensorBoard (runs named by the trial's label, against the step) and the study's MLflow / W&B callbacks."""
    from tce_ray.study.tracking import tensorboard_callback, tracking_callbacks

    tb = tensorboard_callback(cfg.experiment_path(), bool(cfg.search.seeds))
    return [*([tb] if tb is not None else []), *tracking_callbacks(cfg.tracking, cfg.name, bool(cfg.search.seeds), trackers)]


def _failed_start(cfg: StudyConfig, resume: bool) -> None:
    """A folder left by a start that died before Tune saved any state
    (:mod:`tce_ray.study.failed_start`): a new study sets its leftovers aside (one line), a
    resume stops with one line saying to run it without ``--resume``."""
    from tce_ray.study.failed_start import never_started, set_aside

    exp_path = cfg.experiment_path()
    if resume and never_started(exp_path):
        raise StudyError(f"nothing to resume at {exp_path}: the study was stopped before Tune saved any state "
                         "(no trial ran); run it again without --resume (it then starts as a new study)")
    note = None if resume else set_aside(exp_path)
    if note:
        print(note, file=sys.stderr, flush=True)


def _restore_tuner(cfg: StudyConfig, trainable: Any, progress: bool) -> tune.Tuner:
    """The Tune experiment at ``<storage>/<name>``, to continue: finished trials are kept,
    unfinished ones continue from their last checkpoint, errored ones stay failed."""
    from ray import tune

    from tce_ray.study.resume import IncompatibleStateError, check_experiment, keep_histories
    from tce_ray.results.tables import DamagedResultsError, study_fs

    exp_path = cfg.experiment_path()
    if not tune.Tuner.can_restore(exp_path):
        fs, base = study_fs(exp_path)
        if fs.get_file_info(base).type.name != "NotFound":  # a ConfigError: the CLI's "bad input", exit 2
            raise ConfigError(str(DamagedResultsError(
                exp_path, "not a study that can be resumed (no tuner.pkl / experiment_state-*.json of a Tune experiment)",
                "give the --storage and study name of a study started with `python -m tce_ray.study`, or run without --resume",
            )))
        raise StudyError(f"nothing to resume at {exp_path}: no Tune experiment there; run without --resume")
    try:
        with warnings.catch_warnings(record=True) as caught:  # one line each, not Python's two
            warnings.simplefilter("always")
            check_experiment(exp_path)  # falls back past state files cut by a kill
            keep_histories(exp_path)  # Tune starts a restored trial's result.json afresh
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
    except IncompatibleStateError as exc:
        raise StudyError(str(exc)) from None
    except DamagedResultsError as exc:  # Tune's saved state cut by a kill, no earlier one: exit 2
        raise ConfigError(str(exc)) from exc
    except (AttributeError, ImportError) as exc:  # tuner.pkl's classes changed (an older tce-ray)
        raise StudyError(
            f"{exp_path}/tuner.pkl was saved by another version of tce-ray and does not load with this one "
            f"({type(exc).__name__}: {exc}); this study cannot be resumed: run it again as a new study"
        ) from None
    if progress:
        print(f"resuming {cfg.name} from {exp_path}")
    return tuner


def _new_tuner(cfg: StudyConfig, trainable: Any, objs: list[Objective], callbacks: list[Any], progress: bool) -> tune.Tuner:
    """A new Tune experiment at ``<storage>/<name>`` (refused where results already are):
    the Optuna searcher with the explicit configurations queued first, the scheduler."""
    from ray import tune

    from tce_ray.train.ray_env import max_concurrent
    from tce_ray.study.trial_history import HistoryKeeper

    exp_path = cfg.experiment_path()
    if tune.Tuner.can_restore(exp_path):
        raise StudyError(
            f"results of a study named {cfg.name!r} already exist at {exp_path}; continue it with "
            "--resume, or choose another --storage / name (or delete that folder)"
        )
    total = cfg.search.total_trials()
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_searcher(cfg, objs), scheduler=build_scheduler(cfg, _modes(objs)), num_samples=total,
            max_concurrent_trials=max_concurrent(cfg.run.train, cfg.resources.max_concurrent_trials),
            trial_name_creator=lambda t: f"trial_{t.trial_id}",
            trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=cfg.name, storage_path=cfg.storage,
            failure_config=tune.FailureConfig(max_failures=0),
            # the keeper first: a report is on the storage before any callback prints it (a kill
            # right after the "report" line must not lose it)
            callbacks=[HistoryKeeper(), *callbacks], verbose=0,
        ),
    )
    if progress:
        n_conf, seeds = len(cfg.search.configurations), cfg.search.seeds
        explicit = f"{n_conf} configurations x {len(seeds)} seeds" if seeds else f"{n_conf} explicit"
        print(f"study {cfg.name}: {total} trials ({explicit}), "
              f"objectives {', '.join(f'{o.key} ({o.mode})' for o in objs)}; results in {exp_path}")
        from tce_ray.study.optuna_store import describe_storage

        print(describe_storage(cfg))
    return tuner


def _searcher(cfg: StudyConfig, objs: list[Objective]) -> Any:
    """``OptunaSearch`` over the study's space: a new Optuna study (a journal file in
    ``<storage>/<name>/``, the ``optuna_storage`` database, or in memory for remote storage;
    see :mod:`tce_ray.study.optuna_store`) with the objectives named and the explicit trials queued."""
    from tce_ray.study.optuna_store import make_searcher

    return make_searcher(cfg, objs)[0]


def _print_summary(result: StudyResult, total: int) -> None:
    counts = result.trials["status"].value_counts().to_dict() if len(result.trials) else {}
    print(f"done: {', '.join(f'{v} {k}' for k, v in counts.items()) or 'no trials'}; report: {result.report}")
    failed = result.failed()
    if len(failed):
        print(f"failed trials ({len(failed)}):")
        for r in failed.to_dict("records"):
            where = r.get("error_file") or r.get("path") or ""
            print(f"  {r['trial_id']} [{r.get('label', '')}]: {r.get('error') or 'no error recorded'}"
                  + (f" (traceback: {where})" if where else ""))
    unfinished = sum(counts.get(k, 0) for k in ("interrupted", "pending"))
    if unfinished or len(result.trials) < total:
        print(f"the study is not finished ({len(result.trials)}/{total} trials, {unfinished} unfinished); "
              f"continue it with --resume")


def build_scheduler(cfg: StudyConfig, modes: dict[str, str]) -> Any:
    """ASHA on ``scheduler.asha.metric`` (its mode from the objective), counted in reports
    (``training_iteration``); None without a scheduler. Caveat: with several objectives the
    trials it stops are told to Optuna as complete with their partial values."""
    if not (cfg.scheduler and cfg.scheduler.asha):
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = cfg.scheduler.asha
    return ASHAScheduler(
        metric=a.metric, mode=modes[a.metric], time_attr="training_iteration",
        grace_period=a.grace_period, reduction_factor=a.reduction_factor,
        max_t=a.max_t or cfg.evaluations_per_run(),
    )


ERROR_FILE = "error.txt"
"""A failed trial's full error (traceback), in its Tune folder ``<storage>/<name>/trial_<id>/``."""


def _complete_records(records: list[Any], exp_path: str) -> list[Any]:
    """The trials' records with what a hard kill may have kept from Tune: the reports of
    every attempt (the kept history merged with ``result.json``, partial lines skipped),
    a finished trial's final metrics (its final record), and each failed trial's full error
    written to ``error.txt`` in its folder (``error_file``). ``exp_path`` is the study's
    folder (a local path or a URI: Tune's ``Result.path`` drops the URI's scheme)."""
    from tce_ray.study.resume import kept_history, merge_history, read_final, trial_result_rows
    from tce_ray.results.tables import atomic_write, study_fs
    from tce_ray.train.run_state import storage_join

    for rec in records:
        if not rec.path:
            continue
        where = storage_join(exp_path, rec.path.rstrip("/").rpartition("/")[2])  # trial_<id>
        fs, base = study_fs(where)
        if fs.get_file_info(base).type.name == "Directory":
            rec.history = merge_history(kept_history(where), trial_result_rows(where))
        if rec.error is None:
            final = read_final(storage_join(exp_path, RUNS_DIR), rec.trial_id)
            if final is not None and _step(final) >= _step(rec.metrics):
                rec.metrics = {**rec.metrics, **final}
        else:
            try:
                atomic_write(fs, f"{base}/{ERROR_FILE}", _error_text(rec.error).encode())
                rec.error_file = f"{where.rstrip('/')}/{ERROR_FILE}"
            except OSError as exc:
                print(f"warning: could not write the error of trial {rec.trial_id} to {where}: {exc}", file=sys.stderr)
    return records


def _step(metrics: dict[str, Any] | None) -> float:
    try:
        return float((metrics or {}).get("step", -1))
    except (TypeError, ValueError):
        return -1.0


def _error_text(error: Any) -> str:
    """The full text of a trial's error: the traceback of the root exception when there is one."""
    import traceback

    if isinstance(error, BaseException):
        parts = ["".join(traceback.format_exception(type(error), error, error.__traceback__))]
        text = str(error)
        if text and text not in parts[0]:
            parts.append(text)
        return _ANSI.sub("", "\n".join(parts))
    return _ANSI.sub("", str(error))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the process names in its tracebacks


def write_study_results(grid: Any, cfg: StudyConfig, modes: dict[str, str]) -> StudyResult:
    """Tables, Parquet files and the report of a finished (or interrupted) study."""
    from tce_ray.results.report import build_report
    from tce_ray.results.tables import StudyTables, collect_trials, group_table, pareto_front, records_from_result_grid, write_tables
    from tce_ray.study.search_space import sampler_kind

    records = _complete_records(records_from_result_grid(grid), cfg.experiment_path())
    stopped = "stopped" if (cfg.scheduler and cfg.scheduler.asha) else "interrupted"
    guard = cfg.guard()
    trials, history = collect_trials(records, modes, total_steps=cfg.run.train.steps, stopped_status=stopped,
                                     default_seed=cfg.run.train.seed, guard=guard)
    pareto = pareto_front(trials, modes) if len(trials) else trials  # ranked with the guard by collect_trials
    class_names = [c[4:] for c in trials.columns if c.startswith("iou/")] if len(trials) else []
    meta = {
        "name": cfg.name,
        "objectives": [{"name": n, "mode": m} for n, m in modes.items()],
        "class_names": class_names,
        "sampler": sampler_kind(cfg.search, len(modes)),
        "scheduler": "asha" if (cfg.scheduler and cfg.scheduler.asha) else None,
        "total_steps": cfg.run.train.steps,
        "seeds": list(cfg.search.seeds) if cfg.search.seeds else None,
        "front_guard": guard.to_meta() if guard else None,
        "config": cfg.file_dict(),
    }
    path = cfg.experiment_path()
    files = write_tables(path, StudyTables(trials, history, pareto, meta))
    report = build_report(path)  # writes groups.parquet too
    files["report"] = report
    files["groups"] = path.rstrip("/") + "/groups.parquet"
    groups = group_table(trials, modes, guard) if len(trials) else None
    return StudyResult(cfg.name, path, trials, pareto, history, report, files, modes, groups)

