"""Training throughput of one real run through Ray Train (the path a study trial takes).

    python -m benchmarks.bench_train_throughput [--quick] [--gpu] [--backbone tiny] ...

Runs ``tce_ray.train.trainer.run_training`` (TorchTrainer, DDP over ``--workers``; gloo on CPU,
NCCL and autocast on GPU) on the built-in synthetic data for MCCE and stochastic TCE,
and reports the images/s and median step time the workers measured.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks._common import print_table, write_results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps, small images")
    p.add_argument("--gpu", action="store_true", help="train on GPU workers (NCCL, autocast)")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: 1 on GPU, 2 on CPU)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=None, help="images per worker per step")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--losses", nargs="+", default=["mcce", "tce_stochastic"])
    args = p.parse_args(argv)

    import ray
    import torch

    from tce_ray.train.runspec import RunSpec
    from tce_ray.train.trainer import run_training

    workers = args.workers or (1 if args.gpu else 2)
    size = args.image_size or ([48, 64] if args.quick else ([512, 1024] if args.gpu else [96, 128]))
    batch = args.batch_size or (8 if args.gpu else 4)
    steps = args.steps or (8 if args.quick else 60)
    num_images = max(4 * batch * workers, 32)
    cpus = os.cpu_count() or 2
    # on a GPU machine the synthetic scenes are generated on the fly: give the loaders the CPUs
    cpus_per_worker = max(1, (cpus - 2) // workers) if args.gpu else 1
    loader_workers = max(1, cpus_per_worker - 2) if args.gpu else 1
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(cpus, workers * cpus_per_worker + 1), log_to_driver=False, include_dashboard=False)

    rows = []
    storage = tempfile.mkdtemp(prefix="tce-bench-train-")
    for loss in args.losses:
        run = RunSpec.model_validate(
            {
                "data": {
                    "name": "synthetic",
                    "options": {"num_images": num_images, "image_size": size, "seed": 0},
                    "loader_workers": loader_workers,
                },
                "model": {"backbone": args.backbone},
                "loss": {"name": loss, "t": 1.0, "gamma": 0.2, "tilt_signal": "class"},
                "train": {
                    "steps": steps,
                    "batch_size": batch,
                    "eval_every": steps,
                    "num_workers": workers,
                    "use_gpu": args.gpu,
                    "cpus_per_worker": cpus_per_worker,
                    "max_failures": 0,
                },
            }
        )
        t0 = time.perf_counter()
        result = run_training(run, name=f"bench-{loss}", storage_path=storage)
        wall = time.perf_counter() - t0
        m = result.metrics
        rows.append(
            {
                "loss": loss,
                "device": "cuda" if args.gpu else "cpu",
                "workers": workers,
                "backbone": args.backbone,
                "image": f"{size[0]}x{size[1]}",
                "batch/worker": batch,
                "steps": steps,
                "median step s": round(float(m.get("step_time_median_s", float("nan"))), 4),
                "images/s": round(float(m.get("images_per_s", float("nan"))), 1),
                "run wall s": round(wall, 1),
            }
        )
    print_table(rows)
    meta = {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if args.gpu and torch.cuda.is_available() else None,
        "args": vars(args),
    }
    write_results("train_throughput_gpu" if args.gpu else "train_throughput", rows, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
