"""A whole study's wall time, and what a start-up setting changes (issue 13, item 3).

Runs the smoke study (``studies/smoke.yaml``: 2 trials one after the other, 2 workers, 4
steps) through the CLI, each run in a fresh process with its own local Ray, in interleaved
rounds of the configurations (A B, B A, ...); from the CLI's progress lines it takes each
trial's start -> first report (the per-trial fixed cost: worker group start, imports, data,
model, first steps, first evaluation) and the study's wall time (process start -> exit,
Ray's own start included).

Configurations:
    plain      Ray as tce-ray starts it.
    preload    ``RAY_preload_python_modules=torch,torchvision,tce_ray.train.worker_loop``: Ray's
               Python workers import these as they start (``--worker-preload-modules``),
               so workers Ray starts ahead of time hold torch before a trial lands on them.
    baseline   another checkout of tce-ray (``--baseline-code DIR``, e.g. a ``git worktree``
               of an older commit) running its own copy of the study file: before/after.

    python -m benchmarks.bench_study_wall [--rounds 3] [--configs plain preload] [--quick]
    python -m benchmarks.bench_study_wall --configs plain baseline --baseline-code /tmp/old

Writes ``benchmarks/out/study_wall_<config>.json`` (one file per configuration) and prints
the per-round ratios against ``plain`` (median and range).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, str]] = {
    "plain": {},
    "preload": {"RAY_preload_python_modules": "torch,torchvision,tce_ray.train.worker_loop"},
    "baseline": {},
}
_LINE = re.compile(r"^\[\s*(\d+)s\] (start|report|finished)\s+(\w+)")


def run_once(config: str, study: Path, work: Path, code: Path = ROOT) -> dict[str, Any]:
    """One study run of the checkout ``code``; its wall time and each trial's start -> first
    report (seconds)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(code), **CONFIGS[config])
    env.pop("RAY_ADDRESS", None)
    if code != ROOT:  # the other checkout's own copy of the study file
        study = code / study.resolve().relative_to(ROOT)
    storage = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=work))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tce_ray.study", str(study), "--storage", str(storage)],
                          cwd=code, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{config}: the study failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    starts: dict[str, int] = {}
    first: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        t, kind, trial = int(m.group(1)), m.group(2), m.group(3)
        if kind == "start":
            starts[trial] = t
        elif kind == "report" and trial not in first:
            first[trial] = t
    to_first = [first[t] - starts[t] for t in starts if t in first]
    return {"config": config, "wall_s": wall, "start_to_first_report_s": to_first}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=["plain", "preload"], choices=sorted(CONFIGS))
    p.add_argument("--study", default=str(ROOT / "studies" / "smoke.yaml"))
    p.add_argument("--baseline-code", type=Path, help="the checkout the 'baseline' configuration runs")
    p.add_argument("--quick", action="store_true", help="one round")
    args = p.parse_args(argv)
    if "baseline" in args.configs and not args.baseline_code:
        p.error("the 'baseline' configuration needs --baseline-code DIR")
    rounds = 1 if args.quick else args.rounds
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tce-study-wall-") as work:
        for r in range(rounds):
            order = args.configs if r % 2 == 0 else list(reversed(args.configs))
            for c in order:
                code = args.baseline_code.resolve() if c == "baseline" else ROOT
                res = run_once(c, Path(args.study), Path(work), code)
                res["round"] = r
                runs.append(res)
                print(f"round {r} {c}: wall {res['wall_s']:.1f} s, start -> first report {res['start_to_first_report_s']}",
                      flush=True)
    table = []
    base = args.configs[0]
    for c in args.configs:
        mine = [x for x in runs if x["config"] == c]
        walls = [x["wall_s"] for x in mine]
        firsts = [v for x in mine for v in x["start_to_first_report_s"]]
        ratios = [x["wall_s"] / next(y["wall_s"] for y in runs if y["config"] == base and y["round"] == x["round"])
                  for x in mine]
        row = {"config": c, "runs": len(mine), "wall_median_s": statistics.median(walls),
               "wall_min_s": min(walls), "wall_max_s": max(walls),
               "first_report_median_s": statistics.median(firsts) if firsts else None,
               f"wall_ratio_vs_{base}_median": statistics.median(ratios),
               "ratio_min": min(ratios), "ratio_max": max(ratios)}
        table.append(row)
        write_results(f"study_wall_{c}{'_quick' if args.quick else ''}", [x for x in runs if x["config"] == c],
                      {"study": args.study, "rounds": rounds, "env": CONFIGS[c], "summary": row,
                       "code": str(args.baseline_code) if c == "baseline" else str(ROOT),
                       "machine": "2 CPU cores; see RESULTS.md for the load during the run"})
    print_table(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
