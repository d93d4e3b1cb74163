"""Issue 23: loop the run that hung in CI until it hangs or N passes, and dump every stack on a hang.

Each pass is a fresh subprocess (its own session, its own Ray) with a time limit:

- ``test``:   ``pytest tests/test_train.py::test_mcce_run_with_distributed_shuffling``
  (2 gloo workers, ``loader_workers: 1``, MCCE; it hung at 93 % of a CI run);
- ``camvid``: a 2-worker run with one loader process per worker on CamVid
  (``$TCE_CAMVID_ROOT`` or ../shared/data/camvid; 96x96 crops of the 2x-downscaled images),
  or on the synthetic data where CamVid is missing.

A pass that runs past ``--timeout`` is a hang: ``py-spy dump`` (with ``--native`` where
it works) of every process of the pass (the pytest/driver process, the raylet, the Ray
Train workers, their DataLoader processes) goes to ``<out>/hang-<pass>-<kind>/``, then the
pass's processes are killed and the loop stops. ``TCE_LOADER_START_METHOD=fork`` (debug
only) brings back the start method that hung, for a before/after comparison.

    flock /work/locks/cpu.lock python benchmarks/repro_loader_hang.py --passes 10 --kinds test,camvid
    TCE_LOADER_START_METHOD=fork python benchmarks/repro_loader_hang.py --passes 10

The summary (passes, hangs, seconds per pass) is printed and appended as one JSON line
to ``<out>/loop.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/test_train.py::test_mcce_run_with_distributed_shuffling"


def _pass_command(kind: str) -> list[str]:
    if kind == "test":
        return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=0", TEST]
    return [sys.executable, str(Path(__file__).resolve()), "--one-camvid-run"]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def dump_stacks(pid: int, folder: Path) -> list[str]:
    """``py-spy dump`` of ``pid`` and its descendants into ``folder``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for p in descendants(pid):
        text = f"# pid {p}: {_cmdline(p)}\n"
        for extra in (["--native"], []):
            try:
                r = subprocess.run(["py-spy", "dump", "--pid", str(p), *extra], capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as e:
                text += f"py-spy failed: {e}\n"
                continue
            text += r.stdout + r.stderr
            if r.returncode == 0:
                break
        (folder / f"pid{p}.txt").write_text(text)
        made.append(f"pid{p}.txt")
    return made


def _kill_all(pid: int) -> None:
    for p in reversed(descendants(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def one_pass(kind: str, timeout_s: float, out: Path, number: int) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(_pass_command(kind), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        folder = out / f"hang-{number}-{kind}"
        files = dump_stacks(proc.pid, folder)
        _kill_all(proc.pid)
        text, _ = proc.communicate()
        (folder / "output.txt").write_text(text or "")
        return {"kind": kind, "result": "hang", "seconds": time.perf_counter() - t0, "stacks": str(folder),
                "files": files}
    result = "pass" if proc.returncode == 0 else "fail"
    if result == "fail":
        (out / f"fail-{number}-{kind}.txt").write_text(text)
    return {"kind": kind, "result": result, "seconds": time.perf_counter() - t0}


def one_camvid_run() -> None:
    """The ``camvid`` pass's body: a 2-worker run, one loader process per worker."""
    import tempfile

    import ray

    from tce_ray.train.runspec import RunSpec
    from tce_ray.train.trainer import run_training

    root = Path(os.environ.get("TCE_CAMVID_ROOT", ROOT.parent / "shared" / "data" / "camvid"))
    if not (root / "train").is_dir():
        root = Path("/work/shared/data/camvid")
    data = ({"name": "camvid", "root": str(root), "options": {"downscale": 2}, "crop_size": 96}
            if (root / "train").is_dir() else {"name": "synthetic", "options": {"num_images": 32, "image_size": [48, 64]}})
    run = RunSpec.model_validate({
        "data": {**data, "loader_workers": 1}, "model": {"backbone": "tiny"}, "loss": {"name": "mcce"},
        "train": {"steps": 12, "batch_size": 2, "eval_every": 6, "num_workers": 2, "max_failures": 0},
    })
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}})
    with tempfile.TemporaryDirectory() as d:
        m = run_training(run, name="hang-loop", storage_path=d).metrics
    print(f"camvid-like run ({data['name']}): step {m['step']}, miou {m['miou']:.3f}")
    ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=50, help="passes of each kind (default 50)")
    ap.add_argument("--kinds", default="test,camvid", help="comma-separated: test, camvid")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds before a pass counts as a hang")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "issue23_hang_loop"))
    ap.add_argument("--one-camvid-run", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one_camvid_run:
        one_camvid_run()
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    method = os.environ.get("TCE_LOADER_START_METHOD", "default")
    t0, rows = time.perf_counter(), []
    for i in range(1, a.passes + 1):
        for kind in kinds:
            row = one_pass(kind, a.timeout, out, i)
            rows.append(row)
            print(f"pass {i} {kind}: {row['result']} in {row['seconds']:.0f} s"
                  + (f"; stacks in {row['stacks']}" if row["result"] == "hang" else ""), flush=True)
            if row["result"] == "hang":
                break
        if rows[-1]["result"] == "hang":
            break
    summary = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_method": method, "kinds": kinds,
        "passes": {k: sum(r["result"] == "pass" for r in rows if r["kind"] == k) for k in kinds},
        "fails": sum(r["result"] == "fail" for r in rows), "hangs": [r for r in rows if r["result"] == "hang"],
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "seconds_per_pass": {k: round(sum(r["seconds"] for r in rows if r["kind"] == k)
                                      / max(1, sum(r["kind"] == k for r in rows)), 1) for k in kinds},
    }
    print(json.dumps(summary))
    with open(out / "loop.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    return 1 if summary["hangs"] or summary["fails"] else 0


if __name__ == "__main__":
    sys.exit(main())
