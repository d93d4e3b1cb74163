"""A run's confusion matrix as a small Parquet file saved with each checkpoint.

``confusion.parquet`` beside ``state.pt`` in every Train checkpoint (rank 0 writes it with
the checkpoint): one row per true class, one int64 column per predicted class, named after
the classes (the column ``class`` holds the row's true class). A study's ``checkpoint``
column points to each trial's last checkpoint, so ``load_study(dir).confusion(trial_id)``
reads that trial's final matrix. pyarrow and numpy only (no torch, no Ray).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["CONFUSION_FILE", "save_confusion", "load_confusion"]

CONFUSION_FILE = "confusion.parquet"


def save_confusion(directory: str | os.PathLike[str], cm: Any, class_names: Sequence[str]) -> str:
    """Write ``cm`` (K x K counts, rows = true class; a tensor or an array) to
    ``directory/confusion.parquet``; returns the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    m = np.asarray(cm.cpu() if hasattr(cm, "cpu") else cm, dtype=np.int64)
    names = [str(c) for c in class_names]
    if m.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix of shape {m.shape} for {len(names)} classes")
    table = pa.table({"class": names, **{n: m[:, j] for j, n in enumerate(names)}})
    path = os.path.join(os.fspath(directory), CONFUSION_FILE)
    pq.write_table(table, path)
    return path


def load_confusion(directory: str | os.PathLike[str]) -> pd.DataFrame:
    """The matrix :func:`save_confusion` wrote: a DataFrame indexed by the true class, one
    column per predicted class. FileNotFoundError naming the file when it is missing."""
    import pyarrow.parquet as pq

    path = os.path.join(os.fspath(directory), CONFUSION_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (checkpoints written before confusion matrices were saved have none)")
    return pq.read_table(path).to_pandas().set_index("class")
