"""confusion_io: the checkpoint's confusion.parquet round trip and its checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tce_ray.train.confusion_io import CONFUSION_FILE, load_confusion, save_confusion


def test_round_trip_keeps_counts_and_names(tmp_path: Path) -> None:
    cm = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    path = save_confusion(tmp_path, cm, ["road", "car", "bicycle"])
    assert Path(path) == tmp_path / CONFUSION_FILE
    df = load_confusion(tmp_path)
    assert df.index.tolist() == ["road", "car", "bicycle"] and df.columns.tolist() == ["road", "car", "bicycle"]
    np.testing.assert_array_equal(df.to_numpy(), cm.numpy())
    assert df.loc["car", "road"] == 2  # row = true class, column = predicted
    assert str(df.dtypes.iloc[0]) == "int64"


def test_bad_shape_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for 3 classes"):
        save_confusion(tmp_path, np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="confusion.parquet not found"):
        load_confusion(tmp_path)
