"""``tce-evaluate``: score a trial's trained model on a data split, or label a folder of images.

::

    tce-evaluate results/smoke --trial best:worst_iou                  # the trial's val split
    tce-evaluate results/smoke --trial 3eb62b52 --split test --reference best:miou
    tce-evaluate results/smoke --images photos/ --out labels/          # PNG label maps

On a split (the data set of the trial's run, its ``val_split`` by default, built without
augmentation at full resolution): the confusion matrix
(:func:`tce_ray.train.evaluation.evaluate_confusion`), per-class IoU and the paper's
Table 3 criteria (:func:`tce_ray.core.metrics.fairness_report`; with ``--reference`` the
sorted bottom/top 25 % against that trial's IoU on the same split) and the study's
objectives: a table in percent on stdout, ``metrics.json`` (fractions, as the result files)
in ``--out``. On ``--images DIR``: one ``<image stem>.png`` per image (8-bit, pixel value =
class id) and ``predictions.json`` (class pixel counts per image). No Ray. Exit 2 with one
``error:`` line for a bad study folder, trial, objective, split or image folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tce_ray.results.trial_model import TrialModel, load_trial_model

if TYPE_CHECKING:  # pragma: no cover
    from tce_ray.results.study_data import StudyData

__all__ = ["evaluate_split", "predict_folder", "main"]

TABLE3 = ("miou", "worst", "std", "p25", "p25_mean", "p75", "p75_mean", "sorted_bottom25", "sorted_top25")


def _split_dataset(tm: TrialModel, split: str | None, root: str | None) -> Any:
    from tce_ray.data import build_dataset

    data = tm.run.get("data") or {}
    name, split = data.get("name", "synthetic"), split or data.get("val_split", "val")
    ds = build_dataset(name, split, root=root or data.get("root"), augment=False, **(data.get("options") or {}))
    if ds.num_classes != len(tm.class_names):
        raise ValueError(f"{name}/{split} has {ds.num_classes} classes but trial {tm.trial_id}'s model predicts "
                         f"{len(tm.class_names)}")
    if len(ds) == 0:
        raise ValueError(f"{name}/{split} has no images")
    return ds


def _confusion(tm: TrialModel, ds: Any, device: str) -> np.ndarray:
    import torch
    from torch.utils.data import DataLoader

    from tce_ray.train.evaluation import evaluate_confusion

    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=0)  # full-size images of any shape
    cm = evaluate_confusion(tm.network, loader, len(tm.class_names), torch.device(device))
    return cm.cpu().numpy()


def _study(study: Any) -> StudyData:
    from tce_ray.results.study_data import StudyData, load_study

    return study if isinstance(study, StudyData) else load_study(study)


def evaluate_split(study_dir: str | os.PathLike[str] | StudyData, trial: str = "best", split: str | None = None, *,
                   reference: str | None = None, root: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Score ``trial``'s model on ``split`` of its data set (default: the run's val split);
    returns what ``metrics.json`` holds (IoU and criteria as fractions, None for absent classes)."""
    from tce_ray.core.metrics import fairness_report, per_class_iou
    from tce_ray.core.objectives import get_objective

    study = _study(study_dir)
    tm = load_trial_model(study, trial, device)
    ds = _split_dataset(tm, split, root)
    cm = _confusion(tm, ds, device)
    iou = per_class_iou(cm)
    if np.isnan(iou).all():
        raise ValueError(f"no class is present in {ds.name}/{ds.split}: every IoU is undefined")
    ref = ref_id = None
    if reference:
        rm = load_trial_model(study, reference, device)
        ref, ref_id = per_class_iou(_confusion(rm, ds, device)), rm.trial_id
    report = fairness_report(iou, ref, class_names=list(ds.class_names))
    label = study.trials.loc[study.trials["trial_id"] == tm.trial_id, "label"] if "label" in study.trials else []
    return {
        "study": study.path, "trial_id": tm.trial_id, "label": str(label.iloc[0]) if len(label) else "",
        "checkpoint": tm.checkpoint, "step": tm.step, "data": ds.name, "split": ds.split, "images": len(ds),
        "reference": ref_id, "iou": {c: _num(v) for c, v in zip(ds.class_names, iou)},
        "criteria": {k: _num(v) if isinstance(v, float) else v for k, v in report.items()},
        "objectives": {k: _num(float(get_objective(k)(iou))) for k in study.objectives},
        "confusion": cm.astype(np.int64).tolist(), "class_names": list(ds.class_names),
    }


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _image_files(images: Path) -> list[Path]:
    from tce_ray.data.files import IMAGE_EXTENSIONS

    if not images.is_dir():
        raise FileNotFoundError(f"--images {str(images)!r} is not a folder; give a folder of images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    files = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(images)!r}")
    stems = [p.stem for p in files]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise ValueError(f"images {twins[:3]} in {str(images)!r} share a name (different extensions): their "
                         "label maps would overwrite each other; rename them")
    return files


def predict_folder(study_dir: str | os.PathLike[str] | StudyData, images: str | os.PathLike[str], out: str | os.PathLike[str],
                   trial: str = "best", *, device: str = "cpu") -> dict[str, Any]:
    """Label every image of the folder ``images`` with ``trial``'s model: ``out/<stem>.png``
    (uint8, pixel = class id); returns what ``predictions.json`` holds."""
    import torch
    from PIL import Image

    from tce_ray.data.transforms import SegmentationTransform

    tm = load_trial_model(_study(study_dir), trial, device)
    if len(tm.class_names) > 256:
        raise ValueError(f"{len(tm.class_names)} classes do not fit an 8-bit label map")
    files, out = _image_files(Path(images)), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transform, rows = SegmentationTransform(augment=False), []
    for f in files:
        with Image.open(f) as im:
            rgb = np.array(im.convert("RGB"))  # a writable copy
        x, _ = transform(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8))
        with torch.no_grad():
            pred = tm.network(x[None].to(device)).argmax(1)[0].cpu().numpy().astype(np.uint8)
        target = out / f"{f.stem}.png"
        Image.fromarray(pred, mode="L").save(target)
        counts = np.bincount(pred.ravel(), minlength=len(tm.class_names))
        rows.append({"image": str(f), "labels": str(target), "height": int(pred.shape[0]), "width": int(pred.shape[1]),
                     "pixels": {c: int(n) for c, n in zip(tm.class_names, counts) if n}})
    return {"trial_id": tm.trial_id, "checkpoint": tm.checkpoint, "class_names": tm.class_names, "images": rows}


def _pct(v: Any) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def format_metrics(m: dict[str, Any]) -> str:
    """The table ``tce-evaluate`` prints: per-class IoU and the Table 3 criteria, in percent."""
    lines = [f"trial {m['trial_id']} ({m['label'] or 'no label'}), step {m['step']}, on {m['data']}/{m['split']} "
             f"({m['images']} images)", "", f"{'class':<24}IoU %"]
    lines += [f"{c:<24}{_pct(v)}" for c, v in m["iou"].items()]
    crit = m["criteria"]
    ref = f", reference trial {m['reference']}" if m.get("reference") else ""
    lines += ["", f"Table 3 criteria (%{ref}):"]
    lines += [f"  {k:<22}{_pct(crit[k])}" for k in TABLE3 if k in crit]
    lines.append(f"  {'worst_class':<22}{crit.get('worst_class')}")
    if crit.get("absent"):
        lines.append(f"  {'absent':<22}{', '.join(map(str, crit['absent']))}")
    lines += ["", "objectives: " + ", ".join(f"{k} {_pct(v).strip()} %" for k, v in m["objectives"].items())]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tce-evaluate", description=(
        "Score a trial's trained model on a data split (per-class IoU, the paper's Table 3 criteria) "
        "or write its predicted label maps for a folder of images. No Ray."))
    p.add_argument("study_dir", help="the study's result folder, <storage>/<name>")
    p.add_argument("--trial", default="best", help="a trial id, best:<objective> (e.g. best:worst_iou) or best "
                                                   "(the study's first objective; the default)")
    p.add_argument("--split", default=None, help="the data split to score (default: the run's val split)")
    p.add_argument("--root", default=None, help="the data set's folder, if not where the study read it")
    p.add_argument("--reference", default=None, help="a trial (id or best:<objective>) whose IoU on the same split "
                                                     "orders the classes for the sorted bottom/top 25%% criteria")
    p.add_argument("--images", default=None, help="a folder of images to label instead of scoring a split")
    p.add_argument("--out", default=None, help="where metrics.json / the label maps go "
                                               "(default: ./evaluation/<study>-<trial>)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1); default cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``tce-evaluate``; 0, or 2 with one ``error:`` line."""
    args = _parser().parse_args(argv)
    try:
        name = os.path.basename(os.path.normpath(str(args.study_dir)))
        out = Path(args.out or Path("evaluation") / f"{name}-{args.trial.replace(':', '-')}")
        if args.images:
            result = predict_folder(args.study_dir, args.images, out, args.trial, device=args.device)
            lines = [f"{Path(r['image']).name}: {r['width']}x{r['height']} -> {r['labels']}" for r in result["images"]]
            print(f"trial {result['trial_id']}: labelled {len(lines)} images\n" + "\n".join(lines))
            target = out / "predictions.json"
        else:
            result = evaluate_split(args.study_dir, args.trial, args.split, reference=args.reference,
                                    root=args.root, device=args.device)
            print(format_metrics(result))
            out.mkdir(parents=True, exist_ok=True)
            target = out / "metrics.json"
        target.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    except (KeyError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, OSError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
