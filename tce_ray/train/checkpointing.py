"""What a training checkpoint holds, and how it is written and read back.

A checkpoint directory holds one file, ``state.pt`` (``torch.save``), read back with
``torch.load(weights_only=True)``; every entry is a tensor or plain Python data:

- ``format``: :data:`CHECKPOINT_FORMAT`
- ``step``: training steps done
- ``model``: the unwrapped model's ``state_dict`` (no DDP ``module.`` prefix)
- ``optimizer``, ``scaler``: their ``state_dict`` (``scaler`` None without fp16 autocast)
- ``rng``: ``{"seed", "step"}``; the loop reseeds every random stream from
  ``(seed, rank, step)`` when it (re)starts, so a resumed run is deterministic per worker
- ``weight_state``: the class-weight ``TiltState.state_dict()`` (stochastic TCE, else None)
  and ``weight_state_hash`` (``tce_ray.train.weights_actor.state_hash``)
- ``run``: the run's ``RunSpec`` as JSON data (for provenance)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "state.pt"
REQUIRED_KEYS = ("format", "step", "model", "optimizer", "scaler", "rng", "weight_state", "weight_state_hash", "run")


def save_training_state(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (keys :data:`REQUIRED_KEYS`) to ``directory/state.pt``; returns the path."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"training state lacks {missing}; a checkpoint needs {list(REQUIRED_KEYS)}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"training state format {state['format']!r} is not {CHECKPOINT_FORMAT}")
    path = Path(directory) / CHECKPOINT_FILE
    torch.save(state, path)
    return path


def load_training_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``directory/state.pt`` (``weights_only=True``, onto the CPU) and check its keys."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in checkpoint directory {directory}; was it written by tce_ray.train.trainer?")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a tce_ray checkpoint of format {CHECKPOINT_FORMAT} (missing {missing}, "
            f"format {state.get('format')!r}); start the run under a new name"
        )
    return state
