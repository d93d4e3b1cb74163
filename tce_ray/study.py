"""Run a hyper-parameter study: Ray Tune + Optuna over TCE trainings, results and report.

CLI::

    python -m tce_ray.study studies/synthetic_fairness.yaml [--storage DIR] [--resume]
                            [--address ADDR] [--dashboard]

Python::

    from tce_ray.study import run_study
    result = run_study("studies/smoke.yaml", storage="/tmp/res")
    result.trials      # pandas DataFrame, one row per trial
    result.pareto      # the non-dominated completed trials
    result.groups      # one row per configuration: mean and std over its seeds

How it runs (see RAY_NOTES.md for the Ray facts behind each choice):

- the YAML is validated first (:mod:`tce_ray.config`; Ray and the trainer are imported
  only afterwards);
- Ray: an already initialised Ray is used as is; else ``--address`` / ``RAY_ADDRESS``
  connects to a cluster; else a local Ray starts with its dashboard process (Ray frees the
  placement groups of trials stopped early through it), the UI bound to 127.0.0.1;
- one Tune *function* trial per sample: it builds the trial's :class:`RunSpec` and calls
  ``tce_ray.train.run_training`` (a ``TorchTrainer`` whose reports reach Tune through a
  ``TuneReportCallback``). The trial itself holds no CPU (a 1-byte ``memory`` bundle, as
  Tune needs a non-empty one): the trainer's workers request ``train.num_workers`` x
  ``train.cpus_per_worker`` CPUs (and a GPU each with ``train.use_gpu``);
  ``resources.max_concurrent_trials`` defaults to what the cluster fits;
- ``OptunaSearch`` with the define-by-run space of :mod:`tce_ray.search_space`, metric and
  mode lists for several objectives; the explicit configurations are enqueued first (with
  ``search.seeds``: once per (configuration, seed), seed by seed; the seed becomes that
  trial's ``train.seed``; sampled trials run with the base ``train.seed``);
- a failed trial (an error, a non-finite loss or objective) is recorded with status
  ``failed`` and its error and the study goes on (Tune ``FailureConfig(max_failures=0)``);
- ``--resume`` restores the Tune experiment (``Tuner.restore``; the searcher's state, the
  Optuna study included, comes with it): finished trials are not run again, unfinished
  ones continue from their last Train checkpoint, errored ones stay failed;
- at the end: ``trials.parquet``, ``history.parquet``, ``pareto.parquet``, ``study.json``,
  ``groups.parquet`` (mean ± std over the seeds of each configuration), ``report.md`` and
  ``plots/`` in ``<storage>/<name>/`` (:mod:`tce_ray.results`, :mod:`tce_ray.report`).

Exit codes of the CLI: 0 done (failed trials are reported, not fatal), 2 invalid study
or arguments, 1 the study could not run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import ConfigError, StudyConfig, is_uri, load_config, parse_config
from .runspec import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .objectives import Objective

__all__ = ["run_study", "StudyResult", "StudyError", "resolve_objectives", "build_scheduler", "write_study_results", "main"]

RUNS_DIR = "runs"
"""Train runs of the trials live in ``<storage>/<name>/runs/<trial_id>``."""


class StudyError(RuntimeError):
    """The study cannot run as asked (results already there, nothing to resume, ...)."""


@dataclass
class StudyResult:
    """What :func:`run_study` returns."""

    name: str
    path: str
    """``<storage>/<name>``: the Tune experiment and the result files."""
    trials: pd.DataFrame
    pareto: pd.DataFrame
    history: pd.DataFrame
    report: str
    files: dict[str, str] = field(default_factory=dict)
    objectives: dict[str, str] = field(default_factory=dict)
    groups: pd.DataFrame | None = None
    """One row per group of trials sharing loss settings (the seeds of a configuration):
    mean and std of every objective and criterion (``results.group_table``)."""

    def failed(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "failed"]


# --------------------------------------------------------------------------- objectives


def resolve_objectives(items: Sequence[Any]) -> list[Objective]:
    """Objectives from registry names, ``"package.module:function"`` strings or
    :class:`~tce_ray.objectives.Objective` objects (registered on the fly when new)."""
    from .objectives import Objective, get_objective, list_objectives, register_objective

    out: list[Objective] = []
    for item in items:
        if isinstance(item, str):
            out.append(get_objective(item))
        elif isinstance(item, Objective):
            if item.name in list_objectives():
                known = get_objective(item.name)
                if known.fn is not item.fn or known.mode != item.mode:
                    raise ValueError(
                        f"objective {item.name!r} is already registered with another function or mode; "
                        "give yours another name"
                    )
            else:
                register_objective(item.name, item.mode)(item.fn)
            out.append(item)
        elif callable(item):
            found = [get_objective(n) for n in list_objectives() if get_objective(n).fn is item]
            if not found:
                raise TypeError(
                    f"{getattr(item, '__name__', item)!r} is a plain function; decorate it with "
                    "@register_objective(name, mode) or pass Objective(name, mode, fn)"
                )
            out.append(found[0])
        else:
            raise TypeError(f"an objective is a name, 'module:function' or an Objective, got {type(item).__name__}")
    names = [o.name for o in out]
    if not out or len(set(names)) != len(names):
        raise ValueError(f"objectives must be a non-empty list of distinct objectives, got {names}")
    return out


# --------------------------------------------------------------------------- Ray side


def _ensure_ray(address: str | None, dashboard: bool, *, quiet: bool = False) -> bool:
    """Initialise Ray unless it is; True when the Ray in use is a local one we started
    (or one this process had started), False for a cluster we connected to."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if dashboard:
        os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"] = "1"
    if os.environ.get("RAY_TRAIN_ENABLE_STATE_TRACKING"):
        env["RAY_TRAIN_ENABLE_STATE_TRACKING"] = os.environ["RAY_TRAIN_ENABLE_STATE_TRACKING"]
    if ray.is_initialized():
        if dashboard and not quiet:
            print("Ray was already initialised here; its dashboard (if any) is unchanged.")
        return True
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ctx = ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ctx = ray.init(
            address="local",  # a new local Ray, even where `ray start` left a cluster (use --address auto)
            include_dashboard=True,  # the State API frees placement groups of stopped trials
            dashboard_host="127.0.0.1",
            dashboard_port=None,  # 8265, or the next free port when another Ray holds it
            runtime_env={"env_vars": env},
            log_to_driver=False,
        )
    if dashboard:
        url = getattr(ctx, "dashboard_url", None)
        print(
            f"Ray dashboard: http://{url}  (token auth on: the token is in ~/.ray/auth_token)"
            if url else "Ray dashboard: not available on this cluster"
        )
    return not address


def _max_concurrent(cfg: StudyConfig) -> int:
    """What the cluster fits at once: CPUs (and GPUs) over one trial's worker demand."""
    if cfg.resources.max_concurrent_trials:
        return cfg.resources.max_concurrent_trials
    import ray

    res = ray.cluster_resources()
    t = cfg.run.train
    fits = int(res.get("CPU", 1) // max(t.num_workers * t.cpus_per_worker, 1e-9))
    if t.use_gpu:
        fits = min(fits, int(res.get("GPU", 0) // t.num_workers))
    return max(1, fits)


def _check_cluster(cfg: StudyConfig, *, strict: bool) -> None:
    """A trial's workers must fit the cluster: an error on a local Ray (``strict``), a
    warning on an existing cluster (an autoscaler may add nodes)."""
    import ray

    res = ray.cluster_resources()
    t = cfg.run.train
    need_cpu = t.num_workers * t.cpus_per_worker
    problem = None
    if need_cpu > res.get("CPU", 0) + 1e-9:
        problem = (
            f"one trial needs {need_cpu:g} CPUs (train.num_workers={t.num_workers} x "
            f"train.cpus_per_worker={t.cpus_per_worker:g}) but the Ray cluster has {res.get('CPU', 0):g}; "
            "lower them or add nodes"
        )
    elif t.use_gpu and t.num_workers > res.get("GPU", 0):
        problem = (
            f"train.use_gpu with {t.num_workers} workers needs {t.num_workers} GPUs; the cluster has "
            f"{res.get('GPU', 0):g}. Set train.use_gpu: false or fewer workers"
        )
    if problem and strict:
        raise StudyError(problem)
    if problem:
        print(f"warning: {problem} (waiting for the cluster to grow)", file=sys.stderr)


def _with_objectives(metrics: dict[str, Any], objectives: Sequence[tuple[str, Objective]]) -> dict[str, Any]:
    """``metrics`` plus the objectives (metric key, objective) it lacks, from its
    ``iou/<class>`` values (in the order reported); an objective that fails gives NaN (the
    trial is then marked failed)."""
    import numpy as np

    iou = np.array([v for k, v in metrics.items() if k.startswith("iou/")], dtype=np.float64)
    for key, obj in objectives:
        if key not in metrics and iou.size:
            try:
                metrics[key] = obj(iou)
            except ValueError:
                metrics[key] = float("nan")
    return metrics


def _make_report_callback(extra: list[tuple[str, Objective]]) -> Any:
    """A TuneReportCallback that also computes the objectives a report lacks (those
    registered only in this driver, unknown to the workers) from its ``iou/<class>`` values."""
    from ray.tune.integration.ray_train import TuneReportCallback

    if not extra:
        return TuneReportCallback()

    class ObjectiveReportCallback(TuneReportCallback):
        def __init__(self, objectives: list[tuple[str, Objective]]):
            super().__init__()
            self._objectives = objectives

        def after_report(self, run_context, metrics, checkpoint):  # noqa: ANN001
            if metrics:
                metrics = [_with_objectives(dict(metrics[0]), self._objectives), *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReportCallback(extra)


def _pickle_by_value(fns: Sequence[Callable[..., Any]]) -> None:
    """Ship objective functions to the trials by value: their module (a user's script or a
    test file) need not be importable on the Ray workers."""
    from ray import cloudpickle

    for fn in fns:
        mod = sys.modules.get(getattr(fn, "__module__", "") or "")
        if mod is None or mod.__name__ == "__main__" or mod.__name__.split(".")[0] in ("tce_ray", "numpy"):
            continue
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:  # a module cloudpickle cannot take by value: leave it by reference
            pass


@dataclass
class _TrialSetup:
    """What every trial needs (pickled into the Tune trainable): the base run, the
    objectives, where runs go, the registry entries from outside the package."""

    base_run: RunSpec
    objectives: list[str]
    keyed_objectives: list[Any]
    runs_storage: str
    plugins: list[Any]


def _trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """A Tune function trial: the trial's RunSpec (one merge), ``run_training``, a final check."""
    from ray import tune

    from .registry import install_snapshot
    from .search_space import trial_run
    from .train import run_training

    install_snapshot(setup.plugins)  # before the run is validated here and on the workers
    run = trial_run(setup.base_run, config)
    trial_id = tune.get_context().get_trial_id()
    result = run_training(
        run, name=trial_id, storage_path=setup.runs_storage,
        callbacks=[_make_report_callback(setup.keyed_objectives)],
    )
    if getattr(result, "error", None) is not None:
        raise result.error
    final = _with_objectives(dict(result.metrics or {}), setup.keyed_objectives)
    bad = [n for n in setup.objectives if not _finite(final.get(n))]
    if bad:
        raise RuntimeError(
            f"objective(s) {', '.join(bad)} not finite at step {final.get('step')}: "
            f"{ {n: final.get(n) for n in bad} } (all classes absent, or a diverged run)"
        )


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _progress_callback(objectives: list[str], total: int, show_seed: bool = False) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial event: start, every report, end."""

        def __init__(self) -> None:
            self.t0 = time.time()

        def setup(self, **info):  # noqa: ANN003 - a new (or resumed) experiment starts
            self.t0 = time.time()

        @staticmethod
        def _done(trials, trial) -> int:  # noqa: ANN001 - counts a resumed study's earlier trials too
            return 1 + sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial)

        def _label(self, trial) -> str:  # noqa: ANN001
            loss = (trial.config or {}).get("loss", {})
            parts = [str(loss.get("name", "?"))] + [
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in loss.items() if k != "name"
            ]
            study = (trial.config or {}).get("study", {})
            if show_seed and isinstance(study, dict) and study.get("seed") is not None:
                parts.append(f"seed={study['seed']}")
            return f"{trial.trial_id} [{' '.join(parts)}]"

        def _say(self, msg: str) -> None:
            print(f"[{time.time() - self.t0:6.0f}s] {msg}", flush=True)

        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"start    {self._label(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            vals = " ".join(f"{n}={result[n]:.4f}" for n in objectives if _finite(result.get(n)))
            self._say(f"report   {trial.trial_id} step {result.get('step')}: {vals} miou={result.get('miou', float('nan')):.4f}")

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"finished {self._label(trial)} ({self._done(trials, trial)}/{total})")

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            self._say(f"FAILED   {self._label(trial)} ({self._done(trials, trial)}/{total}); the study goes on")

    return Progress()


# --------------------------------------------------------------------------- the study


def _coerce_config(config: StudyConfig | str | os.PathLike[str] | dict[str, Any]) -> StudyConfig:
    if isinstance(config, StudyConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a StudyConfig, a YAML path or a dict, got {type(config).__name__}")


def run_study(
    config: StudyConfig | str | os.PathLike[str] | dict[str, Any],
    *,
    objectives: Sequence[Any] | None = None,
    storage: str | os.PathLike[str] | None = None,
    resume: bool = False,
    address: str | None = None,
    dashboard: bool = False,
    progress: bool = True,
) -> StudyResult:
    """Run (or with ``resume=True`` continue) a study; returns its tables and paths.

    ``objectives`` overrides the config's: registry names, ``"module:function"`` or
    :class:`~tce_ray.objectives.Objective` objects (registered on the fly; objectives the
    workers cannot import are computed from each report's ``iou/<class>`` values).
    ``storage`` overrides ``config.storage``. Raises :class:`ConfigError` for an invalid
    study and :class:`StudyError` when it cannot run as asked.
    """
    cfg = _coerce_config(config)
    if storage is not None:
        cfg = cfg.model_copy(update={"storage": os.fspath(storage)})
    if not is_uri(cfg.storage):
        cfg = cfg.model_copy(update={"storage": os.path.abspath(os.path.expanduser(cfg.storage))})
    items = list(objectives) if objectives is not None else list(cfg.run.objectives)
    objs = resolve_objectives(items)
    worker_names = [item for item in items if isinstance(item, str)]
    # metric keys: the string given (the workers report "pkg.mod:fn" under that string), or
    # the Objective's name; every objective a report lacks is computed from its IoUs here
    keyed = [(item if isinstance(item, str) else o.name, o) for o, item in zip(objs, items)]
    extra = [(k, o) for (k, o), item in zip(keyed, items) if not isinstance(item, str)]
    _pickle_by_value([o.fn for _, o in extra])
    modes = {k: o.mode for k, o in keyed}
    if cfg.scheduler and cfg.scheduler.asha and cfg.scheduler.asha.metric not in modes:
        raise ConfigError(f"{cfg.scheduler.asha.metric!r} is not one of the objectives {list(modes)}", path="scheduler.asha.metric")
    # the workers compute the importable objectives by name; the rest come from the callback
    base_run = cfg.run.model_copy(update={"objectives": worker_names or ["miou"]})

    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    from .search_space import SearchSpace, build_sampler

    local = _ensure_ray(address, dashboard, quiet=not progress)
    _check_cluster(cfg, strict=local)

    exp_path = cfg.experiment_path()
    runs_storage = exp_path + "/" + RUNS_DIR
    from .ray_env import shipped_plugins

    setup = _TrialSetup(base_run, list(modes), keyed, runs_storage, shipped_plugins())
    trainable = tune.with_resources(
        tune.with_parameters(_trial, setup=setup), tune.PlacementGroupFactory([{"memory": 1}])
    )
    exists = tune.Tuner.can_restore(exp_path)
    total = cfg.search.total_trials()
    callbacks = [_progress_callback(list(modes), total, show_seed=bool(cfg.search.seeds))] if progress else []
    if resume:
        if not exists:
            raise StudyError(f"nothing to resume at {exp_path}: no Tune experiment there; run without --resume")
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
        if progress:
            print(f"resuming {cfg.name} from {exp_path}")
    else:
        if exists:
            raise StudyError(
                f"results of a study named {cfg.name!r} already exist at {exp_path}; continue it with "
                "--resume, or choose another --storage / name (or delete that folder)"
            )
        names, mode_list = list(modes), [modes[n] for n in modes]
        storage_obj = optuna.storages.RDBStorage(cfg.optuna_storage) if cfg.optuna_storage else optuna.storages.InMemoryStorage()
        space = SearchSpace.from_config(cfg)
        sampler = build_sampler(cfg.search, len(names))
        try:
            study = optuna.create_study(
                storage=storage_obj, sampler=sampler, study_name=cfg.name,
                directions=["maximize" if m == "max" else "minimize" for m in mode_list],
            )
        except optuna.exceptions.DuplicatedStudyError:
            raise StudyError(
                f"the Optuna storage {cfg.optuna_storage} already holds a study named {cfg.name!r}; "
                "use --resume, another name, or delete it (optuna delete-study)"
            ) from None
        space.enqueue(study)
        searcher = OptunaSearch(
            space=space,
            metric=names if len(names) > 1 else names[0],
            mode=mode_list if len(names) > 1 else mode_list[0],
            sampler=sampler,
            storage=storage_obj,
            study_name=cfg.name,
        )
        scheduler = build_scheduler(cfg, modes)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=total,
                max_concurrent_trials=_max_concurrent(cfg),
                trial_name_creator=lambda t: f"trial_{t.trial_id}",
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=cfg.storage,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=callbacks, verbose=0,
            ),
        )
        if progress:
            n_conf, seeds = len(cfg.search.configurations), cfg.search.seeds
            explicit = f"{n_conf} configurations x {len(seeds)} seeds" if seeds else f"{n_conf} explicit"
            print(f"study {cfg.name}: {total} trials ({explicit}), "
                  f"objectives {', '.join(f'{n} ({m})' for n, m in modes.items())}; results in {exp_path}")
    grid = tuner.fit()
    result = write_study_results(grid, cfg, modes)
    if progress:
        counts = result.trials["status"].value_counts().to_dict() if len(result.trials) else {}
        print(f"done: {', '.join(f'{v} {k}' for k, v in counts.items()) or 'no trials'}; report: {result.report}")
        unfinished = sum(counts.get(k, 0) for k in ("interrupted", "pending"))
        if unfinished or len(result.trials) < total:
            print(f"the study is not finished ({len(result.trials)}/{total} trials, {unfinished} unfinished); "
                  f"continue it with --resume")
    return result


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


def write_study_results(grid: Any, cfg: StudyConfig, modes: dict[str, str]) -> StudyResult:
    """Tables, Parquet files and the report of a finished (or interrupted) study."""
    from .report import build_report
    from .results import StudyTables, collect_trials, group_table, pareto_front, records_from_result_grid, write_tables

    records = records_from_result_grid(grid)
    stopped = "stopped" if (cfg.scheduler and cfg.scheduler.asha) else "interrupted"
    trials, history = collect_trials(records, modes, total_steps=cfg.run.train.steps, stopped_status=stopped,
                                     default_seed=cfg.run.train.seed)
    pareto = pareto_front(trials, modes) if len(trials) else trials
    class_names = [c[4:] for c in trials.columns if c.startswith("iou/")] if len(trials) else []
    meta = {
        "name": cfg.name,
        "objectives": [{"name": n, "mode": m} for n, m in modes.items()],
        "class_names": class_names,
        "sampler": cfg.search.sampler or ("nsga2" if len(modes) > 1 else "tpe"),
        "scheduler": "asha" if (cfg.scheduler and cfg.scheduler.asha) else None,
        "total_steps": cfg.run.train.steps,
        "seeds": list(cfg.search.seeds) if cfg.search.seeds else None,
        "config": cfg.file_dict(),
    }
    path = cfg.experiment_path()
    files = write_tables(path, StudyTables(trials, history, pareto, meta))
    report = build_report(path)  # writes groups.parquet too
    files["report"] = report
    files["groups"] = path.rstrip("/") + "/groups.parquet"
    groups = group_table(trials, modes) if len(trials) else None
    return StudyResult(cfg.name, path, trials, pareto, history, report, files, modes, groups)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tce_ray.study",
        description=(
            "Run a TCE hyper-parameter study (Ray Tune + Optuna) described by a YAML file. "
            "The file is validated before Ray starts. Results: <storage>/<name>/ with "
            "trials.parquet, pareto.parquet, history.parquet, report.md and plots/."
        ),
        epilog="Example: python -m tce_ray.study studies/synthetic_fairness.yaml  (the built-in data, ~20 min on 2 cores)",
    )
    p.add_argument("config", metavar="PATH", help="the study's YAML file (see studies/*.yaml)")
    p.add_argument("--storage", metavar="DIR",
                   help="where results go, overriding the file's `storage` (a local folder or a URI Ray accepts, e.g. s3://bucket/x)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study in <storage>/<name>: finished trials are not run again, "
                        "unfinished ones continue from their last checkpoint")
    p.add_argument("--address", metavar="ADDR",
                   help="connect to this Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); default: RAY_ADDRESS, else a local Ray")
    p.add_argument("--dashboard", action="store_true",
                   help="start the local Ray with its dashboard on 127.0.0.1 (port 8265 or the next free one; Ray's token "
                        "auth kept: the token is in ~/.ray/auth_token), print its URL, "
                        "and turn on the Train tab (RAY_TRAIN_ENABLE_STATE_TRACKING=1)")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.storage is not None:
            cfg = cfg.model_copy(update={"storage": args.storage})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_study(cfg, resume=args.resume, address=args.address, dashboard=args.dashboard, progress=not args.quiet)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
