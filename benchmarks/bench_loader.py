"""Is the tilted-sampling data pipeline fast enough to keep a CPU training step busy?

For "synthetic" and (when present) "camvid": the class-index build time (cold, then
the cached re-read, and a 2-thread count for comparison), the DataLoader's
throughput with training transforms, the TiltedBatchSampler and 2 loader processes, and
the training-step rate of ``deeplabv3plus(K, "tiny")`` (SGD + MCCE on random data of the
same batch/crop, one torch thread) on this CPU. The loader passes when it delivers >= 3x
the images/s the step consumes (wall clock). On a shared machine wall clocks are noisy, so
the ``*_cpu_*`` columns repeat the comparison from CPU time: the loader's ideal rate with a
free core per process against the step's CPU-time rate (it excludes the workers' IPC).
The exit status is 1 when a CPU-time verdict fails (wall verdicts depend on other load).

    python -m benchmarks.bench_loader [--quick] [--batch-size 4] [--crop-size 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks._common import print_table, write_results
from tce_ray.data import build_dataset
from tce_ray.core.losses import MCCE
from tce_ray.models import deeplabv3plus
from tce_ray.data.sampling import ClassIndex, TiltedBatchSampler

MIN_RATIO = 3.0
LOADER_WORKERS = 2


def camvid_root() -> Path:
    """``$TCE_CAMVID_ROOT`` or ``<repo>/../shared/data/camvid``."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"
    return Path(os.environ.get("TCE_CAMVID_ROOT", default))


class _Uniform:
    def __init__(self, k: int) -> None:
        self.weights = np.full(k, 1.0 / k)


def _timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def index_times(dataset: Any) -> tuple[ClassIndex, dict[str, float]]:
    """The index, and seconds to build it (cold, incl. the Parquet write), to re-read it
    cached, and to count it with a 2-thread pool instead (no cache)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, cold = _timed(lambda: ClassIndex.build(dataset, cache_dir=tmp))
        index, cached = _timed(lambda: ClassIndex.build(dataset, cache_dir=tmp))
    _, pool = _timed(lambda: ClassIndex.from_dataset(dataset, num_threads=2))
    return index, {"index_cold_s": cold, "index_cached_s": cached, "index_2threads_s": pool}


def loader_rate(dataset: Any, index: ClassIndex, batch_size: int, num_batches: int) -> float:
    """Images/s delivered after the first batch (worker start-up excluded)."""
    sampler = TiltedBatchSampler(index, _Uniform(index.num_classes), batch_size, num_batches + 1)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=LOADER_WORKERS)
    images, start = 0, 0.0
    for i, (image, _mask) in enumerate(loader):
        sampler.pop_batch_class()
        if i == 0:
            start = time.perf_counter()
        else:
            images += image.shape[0]
    return images / (time.perf_counter() - start)


def step_rate(num_classes: int, batch_size: int, crop: int, steps: int) -> tuple[float, float]:
    """Images/s of SGD steps of the tiny DeepLabv3+ with MCCE on random data (median step):
    by wall clock, and by this process's CPU time (robust to other load).

    One torch thread, as a Ray Train worker with ``cpus_per_worker=1`` gets
    (OMP_NUM_THREADS=1); the median step time resists the noise of a shared machine.
    """
    torch.manual_seed(0)
    model = deeplabv3plus(num_classes, "tiny").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_fn = MCCE()
    x = torch.randn(batch_size, 3, crop, crop)
    y = torch.randint(0, num_classes, (batch_size, crop, crop))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(2):
            step()
        wall, cpu = [], []
        for _ in range(steps):
            c0 = time.process_time()
            _, dt = _timed(step)
            cpu.append(time.process_time() - c0)
            wall.append(dt)
    finally:
        torch.set_num_threads(threads)
    return batch_size / float(np.median(wall)), batch_size / float(np.median(cpu))


def loader_cpu_rate(dataset: Any, index: ClassIndex, num_images: int) -> float:
    """Ideal images/s of ``LOADER_WORKERS`` processes with a free core each: the CPU time of
    ``dataset[i]`` in this process (one torch thread, as in a loader worker)."""
    sampler = TiltedBatchSampler(index, _Uniform(index.num_classes), num_images, 1, seed=1)
    ids = next(iter(sampler))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        for i in ids:
            dataset[i]
        per_image = (time.process_time() - start) / len(ids)
    finally:
        torch.set_num_threads(threads)
    return LOADER_WORKERS / per_image


def bench(name: str, root: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    dataset = build_dataset(
        name, "train", root=None if root is None else str(root), crop_size=args.crop_size, augment=True
    )
    index, times = index_times(dataset)
    loader = loader_rate(dataset, index, args.batch_size, args.loader_batches)
    loader_cpu = loader_cpu_rate(dataset, index, args.batch_size * args.loader_batches)
    train, train_cpu = step_rate(dataset.num_classes, args.batch_size, args.crop_size, args.steps)
    ratio = loader / train
    return {
        "dataset": name,
        "images": len(dataset),
        "K": dataset.num_classes,
        **{k: round(v, 3) for k, v in times.items()},
        "loader_img_s": round(loader, 1),
        "train_img_s": round(train, 1),
        "ratio": round(ratio, 2),
        "loader_cpu_img_s": round(loader_cpu, 1),
        "train_cpu_img_s": round(train_cpu, 1),
        "ratio_cpu": round(loader_cpu / train_cpu, 2),
        "verdict": "PASS" if ratio >= MIN_RATIO else "FAIL",
        "verdict_cpu": "PASS" if loader_cpu / train_cpu >= MIN_RATIO else "FAIL",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=128)
    args = parser.parse_args(argv)
    args.loader_batches, args.steps = (10, 3) if args.quick else (40, 10)

    datasets: list[tuple[str, Path | None]] = [("synthetic", None)]
    root = camvid_root()
    if (root / "train").is_dir():
        datasets.append(("camvid", root))
    else:
        print(f"camvid skipped: not found at {root} (set TCE_CAMVID_ROOT)")
    rows = [bench(name, r, args) for name, r in datasets]
    print_table(rows)
    meta = {
        "batch_size": args.batch_size,
        "crop_size": args.crop_size,
        "loader_workers": LOADER_WORKERS,
        "loader_batches": args.loader_batches,
        "train_steps": args.steps,
        "train_torch_threads": 1,
        "cpus": os.cpu_count(),
        "min_ratio": MIN_RATIO,
        "quick": args.quick,
    }
    write_results("loader", rows, meta)
    return 0 if all(r["verdict_cpu"] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
