"""How much of each class do the training crops hold, under each way of drawing batches?

Stochastic TCE changes what the model sees only through which images (and, with
``class_crop``, which crop) it samples. This simulation measures it directly: for a data
set and a sampling setting it draws ``--batches`` batches exactly as the training loop
does (``TiltedBatchSampler`` for class draws, a shuffled permutation for plain
shuffling), applies the training transform's random scale / pad / crop / flip to each
mask (``SegmentationTransform`` with the run's crop and scale range; the image side is a
1-channel placeholder and the colour jitter is off, which changes no mask pixel; pass
``--with-images`` for the full transform), and counts the labelled pixels of every class
in the crops.

Sources of the class draws (one row each, per setting):
- ``shuffle``: plain shuffling (uniform images, random crop): what MCCE trains on;
- ``uniform``: stochastic TCE with uniform class weights (its start, and its t -> 0 limit);
- ``tilted``: a given weight vector (``--weights``; on CamVid by default the weights the
  class signal reached at t = 1: pole 0.27, bicyclist 0.28, the other classes sharing 0.45);
- ``rare_class``: static rare-class sampling, ``p_c ∝ exp((1 - f_c) / T)`` (DAFormer).
Settings: ``paper`` (image_power 0, random crop: Algorithm 1), ``crop`` (class-centred
crop), and for each ``--powers`` value p (default 1): ``power<p>`` (image_power p) and
``crop+power<p>`` (both).

Output: a table of each class's share (%) of the labelled crop pixels, plus the share of
draws that went to the weight vector's top classes and how often the crop held the drawn
class; one JSON per (data set, source, setting) in benchmarks/out/
(``pixel_share_<data>_<source>_<setting>.json``; a non-default ``--weights`` or
``--temperature`` is part of the source's name, so no run overwrites another
configuration's file) with the standard error of every share (from 10 blocks of batches).

    python -m benchmarks.bench_pixel_share [--data camvid] [--batches 600] [--powers 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import print_table, write_results
from benchmarks.bench_loader import camvid_root
from tce_ray.data import SegmentationTransform, build_dataset
from tce_ray.data.sampling import ClassIndex, StaticClassWeights, TiltedBatchSampler, rare_class_probabilities

BLOCKS = 10


def sampling_settings(powers: list[float]) -> dict[str, tuple[float, bool]]:
    """name -> (image_power, class_crop): ``paper``, ``crop`` and, for each power p,
    ``power<p>`` and ``crop+power<p>``."""
    out: dict[str, tuple[float, bool]] = {"paper": (0.0, False), "crop": (0.0, True)}
    for p in powers:
        if not p > 0:
            raise SystemExit(f"--powers: each image_power must be > 0 (0 is the paper's setting), got {p}")
        out[f"power{p:g}"] = (p, False)
        out[f"crop+power{p:g}"] = (p, True)
    return out


def parse_weights(text: str, names: tuple[str, ...], drawable: np.ndarray) -> np.ndarray:
    """``"pole=0.27,bicyclist=0.28"`` -> [K]: the named classes get their values, the other
    drawable classes share the rest equally."""
    w = np.zeros(len(names))
    named = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in names:
            raise SystemExit(f"--weights: unknown class {name!r}; classes: {', '.join(names)}")
        w[names.index(name)] = float(value)
        named.add(names.index(name))
    rest = [c for c in drawable.tolist() if c not in named]
    left = 1.0 - w.sum()
    if left < -1e-9 or (left > 1e-9 and not rest):
        raise SystemExit(f"--weights: the named weights sum to {w.sum():.3f}; they must leave 1 - sum for the others")
    if rest:
        w[rest] = max(left, 0.0) / len(rest)
    return w


def simulate(
    masks: list[np.ndarray],
    transform: SegmentationTransform,
    batches: list[list[Any]],
    classes: list[int | None],
    k: int,
    with_images: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pixel counts per class per block of batches, drawn-class presence, crop fallbacks."""
    per_block = np.zeros((BLOCKS, k), dtype=np.int64)
    held = drawn = 0
    fallbacks0 = transform.crop_fallbacks
    for b, (batch, c) in enumerate(zip(batches, classes)):
        block = b * BLOCKS // len(batches)
        for item in batch:
            i, focus = item if isinstance(item, tuple) else (item, None)
            mask = masks[i]
            image = with_images[i] if with_images is not None else np.zeros((*mask.shape, 1), np.uint8)
            out = transform(image, mask) if focus is None else transform(image, mask, focus_class=focus)
            m = out[1].numpy().ravel()
            per_block[block] += np.bincount(m[m < k], minlength=k)
            if c is not None:
                drawn += 1
                held += int((m == c).any())
    total = per_block.sum(0)
    share = total / total.sum()
    block_share = per_block / per_block.sum(1, keepdims=True)
    se = block_share.std(0, ddof=1) / np.sqrt(BLOCKS)
    return {
        "share": share,
        "share_se": se,
        "crops_with_drawn_class": held / drawn if drawn else float("nan"),
        "crop_fallbacks": transform.crop_fallbacks - fallbacks0,
        "crops": sum(len(b) for b in batches),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="camvid", choices=["camvid", "synthetic"])
    p.add_argument("--root", default=None, help="CamVid root (default: $TCE_CAMVID_ROOT or ../shared/data/camvid)")
    p.add_argument("--downscale", type=int, default=2, help="CamVid downscale (the study: 2)")
    p.add_argument("--crop", type=int, default=160)
    p.add_argument("--scale", type=float, nargs=2, default=(0.75, 1.5))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=600, help="batches per row")
    p.add_argument("--weights", default=None,
                   help="class=weight,... (default: CamVid's pole=0.27,bicyclist=0.28; other data: the two rarest "
                        "classes 0.27 and 0.28); the other drawable classes share the rest")
    p.add_argument("--temperature", type=float, default=0.01, help="rare-class sampling's T (DAFormer: 0.01)")
    p.add_argument("--powers", type=float, nargs="+", default=[1.0], help="image_power values besides 0")
    p.add_argument("--min-pixels", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-images", action="store_true", help="run the full transform on the real images (slower)")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 batches per row")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.batches = 20

    if args.data == "camvid":
        root = Path(args.root) if args.root else camvid_root()
        if not (root / "train").is_dir():
            print(f"CamVid not found at {root}; nothing to do (set TCE_CAMVID_ROOT)")
            return 0
        ds = build_dataset("camvid", "train", root=str(root), downscale=args.downscale)
    else:
        ds = build_dataset("synthetic", "train")
    names, k = tuple(ds.class_names), ds.num_classes
    t0 = time.perf_counter()
    masks = [ds.load_mask(i) for i in range(len(ds))]
    images = [ds.load_image(i) for i in range(len(ds))] if args.with_images else None
    index = ClassIndex(np.stack([np.bincount(m[m < k].ravel(), minlength=k) for m in masks]), names)
    drawable = index.drawable(args.min_pixels)
    freq = index.pixel_frequencies()
    print(f"{args.data}: {len(ds)} images, {k} classes, masks loaded in {time.perf_counter() - t0:.1f} s")
    transform = SegmentationTransform(
        augment=True, crop_size=args.crop, scale_range=tuple(args.scale), jitter=0.3 if args.with_images else 0.0
    )
    settings = sampling_settings(args.powers)
    default_weights = args.weights is None
    if args.weights is None:
        rare = [names[int(c)] for c in drawable[np.argsort(freq[drawable])][:2]]
        args.weights = "pole=0.27,bicyclist=0.28" if args.data == "camvid" else f"{rare[1]}=0.27,{rare[0]}=0.28"
    tilted = parse_weights(args.weights, names, drawable)
    uniform = np.zeros(k)
    uniform[drawable] = 1.0 / drawable.size
    # a non-default weight vector or temperature is named in the source (and the JSON file name)
    tilted_name = "tilted" if default_weights else "tilted-" + re.sub(r"[^A-Za-z0-9.]+", "-", args.weights).strip("-")
    rare_name = "rare_class" if args.temperature == 0.01 else f"rare_class-T{args.temperature:g}"
    sources: dict[str, np.ndarray] = {
        "uniform": uniform,
        tilted_name: tilted,
        rare_name: rare_class_probabilities(freq, args.temperature, drawable),
    }
    top = [int(c) for c in np.argsort(-tilted)[:2]]
    meta_common = {
        "data": args.data, "downscale": args.downscale if args.data == "camvid" else None, "crop": args.crop,
        "scale_range": list(args.scale), "batch_size": args.batch_size, "batches": args.batches,
        "min_pixels": args.min_pixels, "seed": args.seed, "with_images": args.with_images, "weights_arg": args.weights,
        "class_names": list(names), "train_pixel_frequency": freq.tolist(),
    }

    rows: list[dict[str, Any]] = []

    def record(source: str, setting: str, weights: np.ndarray | None, res: dict[str, Any], seconds: float) -> None:
        row: dict[str, Any] = {"source": source, "setting": setting}
        for c in top:
            row[f"draws {names[c]} %"] = round(100 * float(weights[c]), 1) if weights is not None else None
        row["crop has drawn %"] = round(100 * res["crops_with_drawn_class"], 1) if weights is not None else None
        row["fallbacks"] = res["crop_fallbacks"]
        for c in range(k):
            row[names[c]] = round(100 * float(res["share"][c]), 2)
        rows.append(row)
        meta = {**meta_common, "source": source, "setting": setting, "seconds": round(seconds, 1),
                "class_weights": None if weights is None else weights.tolist(),
                "image_power": settings[setting][0], "class_crop": settings[setting][1]}
        if source.startswith("rare_class"):
            meta["temperature"] = args.temperature
        detail = [{"class": names[c], "share": float(res["share"][c]), "share_se": float(res["share_se"][c])}
                  for c in range(k)]
        detail.append({"crops": res["crops"], "crops_with_drawn_class": res["crops_with_drawn_class"],
                       "crop_fallbacks": res["crop_fallbacks"]})
        write_results(f"pixel_share_{args.data}_{source}_{setting}", detail, meta)

    # plain shuffling: epochs of a seeded permutation, as a DistributedSampler with one replica
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    order = np.concatenate([rng.permutation(len(ds)) for _ in range(args.batches * args.batch_size // len(ds) + 1)])
    batches = [order[b * args.batch_size:(b + 1) * args.batch_size].tolist() for b in range(args.batches)]
    t = time.perf_counter()
    record("shuffle", "paper", None, simulate(masks, transform, batches, [None] * len(batches), k, images),
           time.perf_counter() - t)

    for source, weights in sources.items():
        for setting, (power, crop) in settings.items():
            torch.manual_seed(args.seed)
            sampler = TiltedBatchSampler(index, StaticClassWeights(weights), args.batch_size, args.batches,
                                         min_pixels=args.min_pixels, seed=args.seed, image_power=power, class_crop=crop)
            batches, classes = [], []
            for batch in sampler:
                batches.append(batch)
                classes.append(sampler.pop_batch_class())
            t = time.perf_counter()
            record(source, setting, weights, simulate(masks, transform, batches, classes, k, images),
                   time.perf_counter() - t)

    order_cols = sorted(range(k), key=lambda c: freq[c])  # rarest class first
    print(f"\nShare (%) of the labelled crop pixels per class, rarest first; {args.batches} batches of "
          f"{args.batch_size} per row; crop {args.crop}, scale {tuple(args.scale)}; rare_class T = {args.temperature}")
    print("training-set pixel share: " + ", ".join(f"{names[c]} {100 * freq[c]:.2f}" for c in order_cols))
    head = [c for c in rows[0] if c not in names]
    print_table([{**{h: r[h] for h in head}, **{names[c]: r[names[c]] for c in order_cols}} for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
