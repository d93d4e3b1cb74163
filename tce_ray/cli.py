"""The study command: ``python -m tce_ray.study PATH [--storage DIR] [--resume] ...``.

Validates the file first (no Ray is imported for that), then runs :func:`tce_ray.study.run_study`.
Exit codes: 0 done (failed trials are reported, not fatal), 2 invalid study or arguments,
1 the study could not run, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .config import ConfigError, load_config

__all__ = ["build_parser", "main"]


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
    p.add_argument("--quiet", action="store_true",
                   help="terse progress: one line per trial event (no step rate/ETA, study ETA, best so far or log locations)")
    add_observe_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, overrides=args.set)
        if args.storage is not None:
            cfg = cfg.model_copy(update={"storage": args.storage})
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg, args)
    from .study import StudyError, run_study  # Ray is imported from here on

    try:
        run_study(cfg, resume=args.resume, address=args.address, dashboard=args.dashboard, progress="terse" if args.quiet else True)
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


# --------------------------------------------------------------------------- --version, --set, --dry-run
# (issue 10: packaging and CLI conventions; kept apart from the rest of the parser)


def add_observe_arguments(p: argparse.ArgumentParser) -> None:
    """``--version``, repeated ``--set KEY.PATH=VALUE``, ``--dry-run`` and ``--step-seconds``."""
    from . import __version__

    p.add_argument("--version", action="version", version=f"tce-ray {__version__}")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the study file before it is validated (repeatable; the value is "
                        "YAML: --set train.steps=5 --set search.seeds=[0,1] --set loss.name=focal)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the file and print the trial plan (configurations x seeds + sampled trials, "
                        "resources per trial, a wall-time estimate); Ray is not started")
    p.add_argument("--step-seconds", type=float, metavar="S",
                   help="with --dry-run: seconds per training step for the wall-time estimate")


def dry_run(cfg: Any, args: argparse.Namespace) -> int:
    """Print the plan of the validated study ``cfg``; 0."""
    from .plan import format_plan

    if args.step_seconds is not None and not args.step_seconds > 0:
        print(f"error: --step-seconds must be > 0 (got {args.step_seconds})", file=sys.stderr)
        return 2
    print(format_plan(cfg, step_seconds=args.step_seconds))
    print("dry run: nothing was started")
    return 0
