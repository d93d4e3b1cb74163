"""How long does the full check of a data set take (tce_ray.data.verify), and do threads help?

CamVid train + val (367 + 101 pairs of 480x360 JPEG + PNG label maps) when present, else a
generated folder tree of the same shape: every image decoded and every label map read
through ``load_mask``, with 1, 2 and 4 threads, interleaved round by round (a shared
machine's load drifts), then the cached re-check (the fingerprint's record read back).
The files are in the OS page cache after the first round; the first round's figure is
the one closest to a cold disk. Construction (header-only checks) is shown for scale.

    python -m benchmarks.bench_verify [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import print_table, write_results
from tce_ray.data import build_dataset
from tce_ray.data.verify import verify_splits

THREADS = (1, 2, 4)


def camvid_root() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
    return Path(os.environ.get("TCE_CAMVID_ROOT", default))


def _fake_camvid(root: Path, n_train: int, n_val: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / f"f{i:04d}.jpg", quality=90)
            Image.fromarray(rng.integers(0, 12, (360, 480), dtype=np.uint8), mode="L").save(root / f"{split}annot" / f"f{i:04d}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        root = camvid_root()
        source = "camvid"
        if not (root / "train").is_dir():
            root, source = Path(tmp) / "fake_camvid", "generated"
            _fake_camvid(root, 40 if args.quick else 367, 12 if args.quick else 101)
        t0 = time.perf_counter()
        splits = [build_dataset("camvid", s, str(root)) for s in ("train", "val")]
        construct = time.perf_counter() - t0
        n = sum(len(s) for s in splits)
        times: dict[int, list[float]] = {t: [] for t in THREADS}
        cached: list[float] = []
        for r in range(rounds):
            for t in THREADS:
                cache = Path(tmp) / f"cache_{r}_{t}"
                t0 = time.perf_counter()
                res = verify_splits(splits, cache_dir=cache, num_threads=t, progress=None)
                times[t].append(time.perf_counter() - t0)
                assert all(x.status == "checked" for x in res)
                t0 = time.perf_counter()
                res = verify_splits(splits, cache_dir=cache, num_threads=t, progress=None)
                cached.append(time.perf_counter() - t0)
                assert all(x.status == "cached" for x in res)
    rows = []
    for t in THREADS:
        xs = times[t]
        rows.append({
            "threads": t, "pairs": n, "first_round_s": xs[0], "median_s": statistics.median(xs),
            "min_s": min(xs), "max_s": max(xs), "ms_per_pair": 1e3 * statistics.median(xs) / n,
            "speedup_vs_1": statistics.median(times[1]) / statistics.median(xs),
        })
    print(f"data: {source} ({root}), {n} image/label pairs; construction (headers only): {construct:.2f} s; "
          f"cached re-check: median {1e3 * statistics.median(cached):.1f} ms (max {1e3 * max(cached):.1f})")
    print_table(rows)
    write_results("verify", rows, {
        "data": source, "pairs": n, "rounds": rounds, "construct_s": construct,
        "cached_ms_median": 1e3 * statistics.median(cached), "cached_ms_max": 1e3 * max(cached),
        "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "note": "shared machine: wall clocks are noisy",
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
