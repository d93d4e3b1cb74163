"""Run every benchmark of the project: ``python -m benchmarks [--quick] [--only NAME ...]``.

Each benchmark runs in its own process (each starts and stops its own Ray where it needs
one), prints its table and writes ``benchmarks/out/<name>.json``. A summary of exit
codes and wall times follows; ``benchmarks/RESULTS.md`` collects the figures with their
targets. ``--quick`` passes ``--quick`` to every benchmark (a smoke run: the figures are
not the ones to quote).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (module, what it measures and its target)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "confusion": ("benchmarks.bench_confusion", "confusion matrix, 19 classes, 2x1024x2048: >= 1.5x the masked bincount"),
    "loader": ("benchmarks.bench_loader", "loader images/s with 2 processes: >= 3x the training step rate"),
    "verify": ("benchmarks.bench_verify", "full decode + label check of CamVid train+val, 1/2/4 threads; cached re-check"),
    "actor": ("benchmarks.bench_actor", "class-weight actor, 8 reporters: >= 10,000 reports/s batched"),
    "actor_scale": ("benchmarks.bench_actor_scale", "one class-weight actor vs 16/64/256 simulated workers: round trip, staleness, capacity"),
    "step_overhead": ("benchmarks.bench_step_overhead", "stochastic-TCE step / MCCE step, 2 workers, interleaved rounds: <= 1.01"),
    "train_throughput": ("benchmarks.bench_train_throughput", "images/s of a real Ray Train run (CPU; --gpu on a GPU)"),
    "pixel_share": ("benchmarks.bench_pixel_share", "share of each class's pixels in the training crops per sampling setting"),
    "trial_startup": ("benchmarks.bench_trial_startup", "a smoke trial's phases: fixed per-trial cost against its steps"),
    "study_wall": ("benchmarks.bench_study_wall", "the smoke study's wall time, plain vs Ray's worker module preload, interleaved"),
    "dry_run": ("benchmarks.bench_dry_run", "--dry-run's wall-time estimate vs the study's measured wall time (smoke, 1-seed CamVid): within 1.5x"),
    "search": ("benchmarks.bench_search", "samplers x seeds x 12/20/30 trials on a CamVid-shaped surrogate (seconds; GP minutes); --real: real trials (~1 h)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-run every benchmark (small sizes, few repeats)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    args = parser.parse_args(argv)

    summary = []
    for name in args.only or list(BENCHMARKS):
        module, target = BENCHMARKS[name]
        print(f"\n=== {name}: {target}", flush=True)
        cmd = [sys.executable, "-m", module] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        summary.append((name, rc, time.perf_counter() - t0))

    print("\n=== summary")
    print(f"{'benchmark':<18} {'exit':>4} {'wall s':>8}  output")
    for name, rc, wall in summary:
        print(f"{name:<18} {rc:>4} {wall:>8.1f}  benchmarks/out/")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
