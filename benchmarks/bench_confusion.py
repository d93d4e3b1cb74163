"""How fast is tce_ray.core.metrics.confusion_matrix (validation included) vs the obvious code?

19 classes, a 2x1024x2048 int64 pred/target batch (Cityscapes size), ~10% ignore (255)
pixels. Compares, by the median of N timed calls: the project's function, the
straightforward ``bincount(K*target[mask] + pred[mask])``, its two validation aminmax
passes alone, and torchmetrics' MulticlassJaccardIndex.update() when torchmetrics is
installed. All matrices must be identical. Target: >= 1.5x the straightforward code.

    python -m benchmarks.bench_confusion [--quick] [--repeats N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._common import median, print_table, time_ms, write_results
from tce_ray.core.metrics import confusion_matrix

NUM_CLASSES = 19
IGNORE = 255
IGNORE_FRAC = 0.10
MIN_SPEEDUP = 1.5


def naive(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward masked bincount."""
    m = target != IGNORE
    return torch.bincount(k * target[m] + pred[m], minlength=k * k).reshape(k, k)


def make_batch(shape: tuple[int, ...], device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random int64 pred/target with ~IGNORE_FRAC ignored target pixels."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, NUM_CLASSES, shape, generator=g)
    pred = torch.randint(0, NUM_CLASSES, shape, generator=g)
    target[torch.rand(shape, generator=g) < IGNORE_FRAC] = IGNORE
    return pred.to(device), target.to(device)


def torchmetrics_update(device: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str:
    """A function running MulticlassJaccardIndex.update() and returning its confusion matrix, or why not."""
    try:
        from torchmetrics.classification import MulticlassJaccardIndex
    except ImportError:
        return "not installed"
    metric = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE, average=None).to(device)

    def run(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        metric.reset()
        metric.update(pred, target)
        return metric.confmat.clone()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1x256x512 batch and 5 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per method (default 9, quick 5)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    shape = (1, 256, 512) if args.quick else (2, 1024, 2048)
    repeats = args.repeats or (5 if args.quick else 9)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    pred, target = make_batch(shape, args.device)
    k = NUM_CLASSES
    npix = pred.numel()

    methods: dict[str, Callable[[], Any]] = {
        "tce_ray.confusion_matrix": lambda: confusion_matrix(pred, target, k, IGNORE),
        "masked bincount (straightforward)": lambda: naive(pred, target, k),
        "validation only (2x aminmax)": lambda: (torch.aminmax(pred), torch.aminmax(target)),
    }
    tm = torchmetrics_update(args.device)
    if isinstance(tm, str):
        print(f"torchmetrics: {tm} (skipped)")
    else:
        methods["torchmetrics MulticlassJaccardIndex.update"] = lambda: tm(pred, target)

    reference = naive(pred, target, k)
    timings: dict[str, float] = {}
    identical: dict[str, bool | None] = {}
    for name, fn in methods.items():
        out = fn()
        identical[name] = bool(torch.equal(out, reference)) if isinstance(out, torch.Tensor) else None

        def timed(fn: Callable[[], Any] = fn) -> None:
            fn()
            sync()

        timings[name] = median(time_ms(timed, repeats, warmup=1))

    base = timings["masked bincount (straightforward)"]
    rows = [
        {
            "method": name,
            "median_ms": round(ms, 3),
            "mpix_per_s": round(npix / (ms * 1e3), 1),
            "speedup": round(base / ms, 2),
            "identical": identical[name],
        }
        for name, ms in timings.items()
    ]
    print_table(rows)
    speedup = base / timings["tce_ray.confusion_matrix"]
    ok = all(v is not False for v in identical.values()) and (args.quick or speedup >= MIN_SPEEDUP)
    meta = {
        "shape": list(shape),
        "num_classes": k,
        "ignore_index": IGNORE,
        "ignore_fraction": round(float((target == IGNORE).float().mean()), 4),
        "dtype": str(pred.dtype),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "repeats": repeats,
        "quick": args.quick,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "torchmetrics": tm if isinstance(tm, str) else "installed",
        "target_speedup": MIN_SPEEDUP,
        "speedup": round(speedup, 2),
        "pass": ok,
    }
    write_results("confusion" if args.device == "cpu" else f"confusion_{args.device}", rows, meta)
    print(f"speed-up vs straightforward: {speedup:.2f}x (target >= {MIN_SPEEDUP}x) -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
