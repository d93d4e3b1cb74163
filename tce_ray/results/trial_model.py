"""A trial's trained network, from its last checkpoint: ``load_study(dir).model(which)``.

``which`` is a trial id, or ``"best:<objective>"``: among the completed trials with a
checkpoint (those the study's front guard lets through, when it lets any through), the
one best by that objective in the study's direction (a registered objective the study did
not optimise: its registered direction, computed from the trials' per-class IoU); ties go
to the first trial of the table. ``"best"`` alone is the study's first objective.

The network is rebuilt from the ``model`` section the checkpoint recorded (``run``),
without ``backbone_weights`` (the checkpoint holds every tensor), loaded strictly and put in
eval mode. No Ray.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from torch import nn

# ``study`` below is a :class:`tce_ray.results.study_data.StudyData` (not imported: it imports this module).
__all__ = ["TrialModel", "select_trial", "best_trial", "load_trial_model"]


@dataclass
class TrialModel:
    """A trial's network (eval mode) with what it was trained for."""

    trial_id: str
    network: nn.Module
    run: dict[str, Any]
    """The run's settings as the checkpoint recorded them (``RunSpec`` JSON: data, model, loss, ...)."""
    class_names: list[str]
    checkpoint: str
    step: int


def _objective_values(study: Any, name: str) -> tuple[pd.Series, str]:
    """The trials' values of objective ``name`` and its mode ("max"/"min"); KeyError when
    the name is neither the study's nor registered."""
    import pandas as pd

    from tce_ray.core.objectives import get_objective, list_objectives

    trials = study.trials
    if name in study.objectives and name in trials:
        return pd.to_numeric(trials[name], errors="coerce"), study.objectives[name]
    try:
        obj = get_objective(name)
    except (KeyError, ValueError, ImportError):
        raise KeyError(f"unknown objective {name!r} in 'best:{name}'; the study's objectives: "
                       f"{list(study.objectives)}, registered: {list_objectives()}") from None
    mode = "max" if obj.direction == "maximize" else "min"
    if name in trials:
        return pd.to_numeric(trials[name], errors="coerce"), mode
    cols = [f"iou/{c}" for c in study.class_names if f"iou/{c}" in trials]
    if not cols:
        raise KeyError(f"objective {name!r}: the trials table has no per-class IoU (iou/<class>) to compute it from")

    def value(row: Any) -> float:
        iou = row[cols].to_numpy(dtype=np.float64)
        return float(obj.fn(iou)) if not np.isnan(iou).all() else math.nan

    return trials.apply(value, axis=1).astype(float), mode


def best_trial(study: Any, objective: str) -> str:
    """The id of the trial best by ``objective`` (see the module doc)."""
    import pandas as pd

    values, mode = _objective_values(study, objective)
    trials = study.trials
    ckpt = trials["checkpoint"].fillna("").astype(str) if "checkpoint" in trials else pd.Series("", index=trials.index)
    ok = (trials["status"] == "completed") & (ckpt != "") & values.map(lambda v: math.isfinite(v))
    if not ok.any():
        raise FileNotFoundError(f"no completed trial with a checkpoint and a finite {objective} in study {study.name!r} "
                                f"(statuses: {trials['status'].value_counts().to_dict()}); give a trial id instead")
    if "front_guard" in trials:
        guarded = ok & (trials["front_guard"].fillna("").astype(str) == "")
        ok = guarded if guarded.any() else ok
    pick = values[ok]
    return str(trials.loc[pick.idxmax() if mode == "max" else pick.idxmin(), "trial_id"])


def select_trial(study: Any, which: str) -> pd.Series:
    """The trials-table row of ``which`` (a trial id, ``best`` or ``best:<objective>``);
    KeyError naming the trials for an unknown id."""
    if which == "best" or which.startswith("best:"):
        objective = which[5:] or (next(iter(study.objectives), "") if study.objectives else "")
        which = best_trial(study, objective)
    rows = study.trials[study.trials["trial_id"].astype(str) == which]
    if not len(rows):
        raise KeyError(f"no trial {which!r} in study {study.name!r}; its trials: {study.trials['trial_id'].tolist()} "
                       "(or best:<objective>)")
    return rows.iloc[0]


def _read_state(checkpoint: str) -> dict[str, Any]:
    """``state.pt`` of a local or remote (URI) checkpoint directory."""
    from tce_ray.train.checkpointing import CHECKPOINT_FILE, load_training_state
    from tce_ray.train.run_state import RunState, is_uri

    if not is_uri(checkpoint):
        return load_training_state(checkpoint)
    data = RunState(checkpoint).read_bytes(CHECKPOINT_FILE)
    if data is None:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in checkpoint {checkpoint}")
    with tempfile.TemporaryDirectory(prefix="tce-ckpt-") as scratch:
        with open(os.path.join(scratch, CHECKPOINT_FILE), "wb") as f:
            f.write(data)
        return load_training_state(scratch)


def load_trial_model(study: Any, which: str, device: str = "cpu") -> TrialModel:
    """The network of trial ``which`` with its trained weights (eval mode, on ``device``)."""
    from tce_ray.models import deeplabv3plus

    row = select_trial(study, which)
    trial_id = str(row["trial_id"])
    checkpoint = str(row.get("checkpoint") or "")
    if not checkpoint or checkpoint == "nan":
        raise FileNotFoundError(f"trial {trial_id} ({row.get('status')}) has no checkpoint: it never reported one; "
                                "choose another trial (load_study(dir).trials lists them)")
    state = _read_state(checkpoint)
    run, weights = state["run"], state["model"]
    model = run.get("model") or {}
    num_classes = int(weights["classifier.weight"].shape[0])
    net = deeplabv3plus(num_classes, model.get("backbone", "tiny"), int(model.get("output_stride", 16)), None)
    net.load_state_dict(weights, strict=True)
    net.to(device).eval()
    names = study.class_names if len(study.class_names) == num_classes else [str(i) for i in range(num_classes)]
    return TrialModel(trial_id, net, run, list(names), checkpoint, int(state["step"]))
