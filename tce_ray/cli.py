"""The study command: ``python -m tce_ray.study PATH [--storage DIR] [--resume] ...``.

Validates the file, then checks what every trial needs (:mod:`tce_ray.study.preflight`; no Ray
is imported for either), then runs :func:`tce_ray.study.runner.run_study`. The exit codes
(:data:`EXIT_CODES`) are listed in ``--help`` and the README.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

from tce_ray.core.redact import RedactingStream
from tce_ray.study.config import ConfigError, load_config

__all__ = [
    "build_parser", "main", "exit_code", "EXIT_CODES",
    "EXIT_OK", "EXIT_NOT_RUN", "EXIT_BAD_INPUT", "EXIT_SOME_FAILED", "EXIT_ALL_FAILED", "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_NOT_RUN = 1
EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 3
EXIT_ALL_FAILED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "every planned trial completed (or was stopped early by the scheduler)",
    EXIT_NOT_RUN: "the study could not run: results already there without --resume, nothing to resume, "
                  "the study folder locked by another study, the Ray cluster unreachable",
    EXIT_BAD_INPUT: "bad input, nothing ran: an invalid study file or arguments, or a preflight check failed "
                    "(model, data, folders, resources) or damaged results",
    EXIT_SOME_FAILED: "the study finished but some trials failed (see trials.parquet's error column)",
    EXIT_ALL_FAILED: "the study finished and every trial failed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGINT) or unfinished trials: continue with --resume",
}
"""Exit code -> its meaning (``--help`` and the README list them)."""

_DONE = frozenset({"completed", "stopped"})
_UNFINISHED = frozenset({"interrupted", "pending", "running"})


def exit_code(statuses: Iterable[str], total: int) -> int:
    """The exit code of a study that ran: its trials' ``status`` values against the
    ``total`` planned. Unfinished trials (or fewer trials than planned) -> 130 (resume
    possible), else all failed -> 4, some failed -> 3, else 0."""
    statuses = list(statuses)
    if any(s in _UNFINISHED for s in statuses) or len(statuses) < total:
        return EXIT_INTERRUPTED
    failed = sum(s not in _DONE for s in statuses)
    if failed and failed == len(statuses):
        return EXIT_ALL_FAILED
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _epilog() -> str:
    codes = "\n".join(textwrap.fill(text, 88, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
                      for code, text in EXIT_CODES.items())
    return (
        "exit codes:\n" + codes + "\n\n"
        "the study file (README, 'The YAML schema'): the run's sections data, model, loss, optim,\n"
        "train, sampling (how batches are drawn: mode default|rare_class, temperature,\n"
        "image_power, class_crop; the defaults are the paper's Algorithm 1), objectives,\n"
        "front_guard (no trial with mIoU more than max_drop below the reference's is on the\n"
        "front), then search, scheduler, resources, optuna_storage, plugins.\n\n"
        "example: python -m tce_ray.study studies/synthetic_fairness.yaml  (the built-in data; add --dry-run for its wall time measured on this machine)"
    )


def build_parser() -> argparse.ArgumentParser:
    from tce_ray.train.ray_env import DEFAULT_CONNECT_TIMEOUT_S  # no Ray imported by this module

    p = argparse.ArgumentParser(
        prog="python -m tce_ray.study",
        description=(
            "Run a TCE hyper-parameter study (Ray Tune + Optuna) described by a YAML file. "
            "The file is validated, and the model, the data and the folders every trial needs are checked, "
            "before Ray starts. Results: <storage>/<name>/ with "
            "trials.parquet, pareto.parquet, history.parquet, report.md and plots/."
        ),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="PATH", help="the study's YAML file (see studies/*.yaml)")
    p.add_argument("--storage", metavar="DIR",
                   help="where results go, overriding the file's `storage` (a local folder or a URI Ray accepts, e.g. s3://bucket/x)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study in <storage>/<name>: finished trials are not run again, "
                        "unfinished ones continue from their last checkpoint")
    p.add_argument("--address", metavar="ADDR",
                   help="connect to this Ray cluster (e.g. 10.0.0.1:6379 or 'auto'); default: RAY_ADDRESS, else a local Ray")
    p.add_argument("--connect-timeout", metavar="S", type=_positive_float, default=DEFAULT_CONNECT_TIMEOUT_S,
                   help=f"seconds to wait for the cluster at --address / RAY_ADDRESS to answer before giving up "
                        f"(exit 1; default {DEFAULT_CONNECT_TIMEOUT_S:g})")
    p.add_argument("--force-unlock", action="store_true",
                   help="replace the study folder's lock left by a study that no longer runs (a lock object on "
                        "remote storage; a local lock ends with its process and needs nothing)")
    p.add_argument("--dashboard", action="store_true",
                   help="start the local Ray with its dashboard on 127.0.0.1 (port 8265 or the next free one; Ray's token "
                        "auth kept: the token is in ~/.ray/auth_token), print its URL, "
                        "and turn on the Train tab (RAY_TRAIN_ENABLE_STATE_TRACKING=1)")
    p.add_argument("--quiet", action="store_true",
                   help="terse progress: one line per trial event (no step rate/ETA, study ETA, best so far or log locations)")
    add_observe_arguments(p)
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad arguments
    _interruptible()
    out, err = sys.stdout, sys.stderr
    # every console line (ours, the loggers', Ray's driver output) with URI credentials redacted
    sys.stdout, sys.stderr = RedactingStream(out), RedactingStream(err)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err


def _interruptible() -> None:
    """SIGINT stops the study (exit 130) however it was started: a shell starts a background
    job (``cmd &``) with SIGINT ignored, and Python then never raises KeyboardInterrupt, so
    ``kill -INT`` would not stop the wait for a cluster or the preflight (Ray Tune installs
    its own handler later, for the trials)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, overrides=args.set)
        if args.storage is not None:
            cfg = cfg.model_copy(update={"storage": args.storage})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        return dry_run(cfg, args)
    from tce_ray.study.runner import StudyError, run_study  # Ray is imported by run_study, after the preflight

    try:
        result = run_study(cfg, resume=args.resume, address=args.address, dashboard=args.dashboard,
                           progress="terse" if args.quiet else True, force_unlock=args.force_unlock,
                           connect_timeout_s=args.connect_timeout, file=args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_RUN
    statuses = list(result.trials["status"]) if len(result.trials) else []
    code = exit_code(statuses, cfg.search.total_trials())
    if code != EXIT_OK:
        print(f"exit {code}: {EXIT_CODES[code]}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- --version, --set, --dry-run
# (issue 10: packaging and CLI conventions; kept apart from the rest of the parser)


def add_observe_arguments(p: argparse.ArgumentParser) -> None:
    """``--version``, repeated ``--set KEY.PATH=VALUE``, ``--dry-run`` and ``--step-seconds``."""
    from tce_ray import __version__

    p.add_argument("--version", action="version", version=f"tce-ray {__version__}")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the study file before it is validated (repeatable; the value is "
                        "YAML: --set train.steps=5 --set search.seeds=[0,1] --set loss.name=focal)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the file, run the preflight (see --no-preflight) and print the trial plan (configurations x seeds + sampled trials, "
                        "resources per trial, a wall-time estimate); Ray is not started")
    p.add_argument("--no-preflight", action="store_true",
                   help="with --dry-run: skip the preflight (the data set's files and options, the model and its "
                        "weights file, the folders, the resources), which the dry run otherwise runs as the study would")
    p.add_argument("--step-seconds", type=float, metavar="S",
                   help="with --dry-run: seconds per training step for the wall-time estimate")
    p.add_argument("--no-measure", action="store_true",
                   help="with --dry-run: do not time a few training steps of the study here (seconds, no Ray) "
                        "for the wall-time estimate; use the table figure")
    p.add_argument("--no-history", action="store_true",
                   help="with --dry-run: ignore the trials of a previous run of the study in its storage folder "
                        "(the estimate's first source)")


def dry_run(cfg: Any, args: argparse.Namespace) -> int:
    """Run the preflight (unless ``--no-preflight``) and print the plan of the validated study
    ``cfg``; 0, or 2 when the preflight fails (one line)."""
    from tce_ray.study.plan import format_plan

    if args.step_seconds is not None and not args.step_seconds > 0:
        print(f"error: --step-seconds must be > 0 (got {args.step_seconds})", file=sys.stderr)
        return 2
    if not args.no_preflight and not _dry_preflight(cfg, args):
        return EXIT_BAD_INPUT
    print(format_plan(cfg, step_seconds=args.step_seconds, measure=not args.no_measure, history=not args.no_history))
    print("dry run: nothing was started")
    return 0


def _dry_preflight(cfg: Any, args: argparse.Namespace) -> bool:
    """The preflight a study runs before Ray (:func:`tce_ray.study.runner.preflight_study`);
    False after printing its one-line error."""
    from tce_ray.study.runner import preflight_study  # imports no Ray

    try:
        preflight_study(cfg, args.config, args.address, progress=True)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True
