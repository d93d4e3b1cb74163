"""Does ``--dry-run``'s wall-time estimate hold? Estimate vs the measured wall time of the study.

For each case, in one run on this machine: the dry run's estimate from a measurement of the
study (``tce_ray.study.time_estimate``, ``--no-history``), the old table figure
(``--no-measure``), then the study itself, run as a user runs it
(``python -m tce_ray.study FILE --storage DIR``, a fresh folder), timed from the command's
start to its exit. Cases (issue 22's done-when):

- ``smoke``: ``studies/smoke.yaml`` (2 trials, 4 steps each: start-up dominates);
- ``camvid_1seed``: ``studies/camvid_online.yaml`` with one configuration (MCCE) and one
  seed: 1,200 steps of batch 8 on 160-px crops of CamVid at 180x240 (needs
  ``../shared/data/camvid`` or ``TCE_CAMVID_ROOT``; skipped without it).

    python -m benchmarks.bench_dry_run [--quick | --case smoke camvid_1seed] [--work-dir DIR]

Prints the table and writes ``benchmarks/out/dry_run_<case>.json``, one file per case.
Run it on a quiet machine: the measurement and the run are both timed here, now.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import print_table, write_results

ROOT = Path(__file__).resolve().parents[1]
CAMVID = os.environ.get("TCE_CAMVID_ROOT", str(ROOT.parent / "shared" / "data" / "camvid"))

CASES: dict[str, tuple[str, list[str]]] = {
    "smoke": ("studies/smoke.yaml", []),
    "camvid_1seed": ("studies/camvid_online.yaml", ["search.seeds=[0]", "search.configurations=[{name: mcce}]"]),
}


def estimate(file: str, sets: list[str], storage: str, measure: bool):
    from tce_ray.study.config import load_config
    from tce_ray.study.plan import make_plan, plan_time

    cfg = load_config(file, overrides=sets).model_copy(update={"storage": storage})
    return plan_time(cfg, make_plan(cfg), measure=measure, history=False)


def run_case(name: str, work: Path) -> dict:
    file, sets = CASES[name]
    storage = str(work / name)
    measured = estimate(file, sets, storage, measure=True)
    table = estimate(file, sets, storage, measure=False)
    cmd = [sys.executable, "-m", "tce_ray.study", file, "--storage", storage, "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TCE_CAMVID_ROOT": CAMVID})
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{name}: the study failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    m = measured.timing
    return {
        "case": name,
        "estimate_s": round(measured.seconds, 1),
        "measured_wall_s": round(wall, 1),
        "ratio_wall_over_estimate": round(wall / measured.seconds, 3),
        "table_estimate_s": round(table.seconds, 1) if table.seconds else None,
        "ratio_wall_over_table": round(wall / table.seconds, 3) if table.seconds else None,
        "source": measured.source,
        "step_compute_s": round(m.compute_s, 4) if m else None,
        "step_data_s": round(m.data_s, 4) if m else None,
        "eval_image_s": round(m.eval_image_s, 4) if m else None,
        "measure_s": round(m.seconds, 2) if m else None,
        "lines": measured.lines,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", nargs="+", choices=sorted(CASES), default=["smoke", "camvid_1seed"])
    p.add_argument("--quick", action="store_true", help="the smoke case only")
    p.add_argument("--work-dir", default=None, help="where the studies write (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.case = ["smoke"]
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tce-bench-dry-"))
    rows = []
    for name in args.case:
        if name == "camvid_1seed" and not Path(CAMVID).is_dir():
            print(f"skip {name}: no CamVid at {CAMVID} (set TCE_CAMVID_ROOT)")
            continue
        row = run_case(name, work)
        rows.append(row)
        write_results(f"dry_run_{name}", [row], {"case": name, "cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]})
    print_table([{k: v for k, v in r.items() if k != "lines"} for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
