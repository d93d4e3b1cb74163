"""tce_ray.train.evaluation: shards, the confusion matrix of a model (alone and summed over two
gloo processes) and the metrics of one evaluation, against hand-computed cases (no Ray)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from tce_ray.train.evaluation import all_reduce_sum, evaluate_confusion, evaluation_metrics, make_val_loader, shard_indices
from tce_ray.core.metrics import fairness_report
from tce_ray.core.objectives import get_objective, register_objective

torch.set_num_threads(1)

K = 3
# 4 images of 2x3 pixels: the "prediction" is encoded in the image (channel 0 = class id),
# the truth is the mask; 255 = ignore
PRED = [
    [[0, 0, 1], [2, 2, 2]],
    [[1, 1, 1], [0, 0, 0]],
    [[0, 1, 2], [0, 1, 2]],
    [[2, 2, 2], [2, 2, 2]],
]
TRUTH = [
    [[0, 1, 1], [2, 2, 255]],
    [[1, 1, 0], [0, 0, 0]],
    [[0, 1, 2], [255, 255, 255]],
    [[2, 2, 2], [1, 1, 1]],
]


def expected_confusion(images: list[int]) -> np.ndarray:
    """The confusion matrix (rows truth, cols prediction) of ``images``, counted by hand-loop."""
    cm = np.zeros((K, K), dtype=np.int64)
    for i in images:
        for t_row, p_row in zip(TRUTH[i], PRED[i]):
            for t, p in zip(t_row, p_row):
                if t != 255:
                    cm[t, p] += 1
    return cm


class Pairs(Dataset):
    def __len__(self) -> int:
        return len(PRED)

    def __getitem__(self, i: int):
        image = torch.tensor(PRED[i], dtype=torch.float32)[None].repeat(3, 1, 1)
        return image, torch.tensor(TRUTH[i], dtype=torch.int64)


class OneHot(nn.Module):
    """Logits that put the most mass on the class id stored in channel 0 of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(1)  # something whose behaviour depends on train/eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), K).permute(0, 3, 1, 2).float()


def test_shard_indices_cover_everything_once():
    shards = [shard_indices(11, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
    assert shards[1] == [1, 4, 7, 10]
    assert shard_indices(2, 3, 5) == []  # more workers than images: an empty shard
    assert shard_indices(0, 0, 1) == []
    for rank, world in ((3, 3), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank must be in"):
            shard_indices(5, rank, world)


def test_val_loader_yields_this_workers_shard_one_image_at_a_time():
    loader = make_val_loader(Pairs(), 1, 2)
    batches = list(loader)
    assert len(batches) == 2 and all(image.shape == (1, 3, 2, 3) for image, _ in batches)
    assert [b[1][0].tolist() for b in batches] == [TRUTH[1], TRUTH[3]]


def test_confusion_of_a_model_and_its_mode_is_restored():
    model = OneHot()
    model.train()
    cm = evaluate_confusion(model, make_val_loader(Pairs(), 0, 1), K, torch.device("cpu"))
    assert cm.dtype == torch.int64
    assert cm.tolist() == expected_confusion([0, 1, 2, 3]).tolist()
    # by hand: image 0 truth (0,1,1,2,2) pred (0,0,1,2,2); ignore pixels left out
    assert int(cm.sum()) == 5 + 6 + 3 + 6
    assert model.training  # evaluated in eval mode, handed back as it came
    model.eval()
    evaluate_confusion(model, make_val_loader(Pairs(), 0, 1), K, torch.device("cpu"))
    assert not model.training


def test_all_reduce_outside_a_process_group_is_a_no_op():
    t = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]


def _two_workers(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        cm = evaluate_confusion(OneHot(), make_val_loader(Pairs(), rank, 2), K, torch.device("cpu"))
        torch.save(cm, os.path.join(out_dir, f"cm{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_confusion_is_summed_over_two_gloo_workers(tmp_path):
    mp.spawn(_two_workers, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    whole = expected_confusion([0, 1, 2, 3])
    for rank in (0, 1):  # each worker saw its shard (0, 2 or 1, 3) and holds the sum
        assert torch.load(tmp_path / f"cm{rank}.pt").tolist() == whole.tolist()
    assert not np.array_equal(expected_confusion([0, 2]), whole)  # the shards alone differ


def test_metrics_of_a_hand_made_confusion_matrix():
    # rows = truth, cols = prediction; class 2 absent from the data and never predicted
    cm = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    m = evaluation_metrics(cm, ("a", "b", "c"), ["worst_iou", "iou_std"])
    iou_a, iou_b = 3 / (4 + 4 - 3), 1 / (2 + 2 - 1)  # TP / (row + col - TP)
    assert m["iou/a"] == pytest.approx(iou_a) and m["iou/b"] == pytest.approx(iou_b)
    assert math.isnan(m["iou/c"])
    assert m["miou"] == pytest.approx((iou_a + iou_b) / 2)
    assert m["worst_iou"] == pytest.approx(iou_b)
    assert m["iou_std"] == pytest.approx(np.std([iou_a, iou_b], ddof=1))
    assert m["iou_std"] == get_objective("iou_std")(np.array([iou_a, iou_b, np.nan]))
    # every numeric entry of the fairness report, as fairness/<key>; the lists are left out
    report = fairness_report(np.array([iou_a, iou_b, np.nan]), class_names=["a", "b", "c"])
    assert m["fairness/worst"] == pytest.approx(report["worst"]) == pytest.approx(iou_b)
    assert "fairness/absent" not in m and "fairness/worst_class" not in m
    # key order: fairness, miou, objectives, then the classes in the data set's order
    keys = list(m)
    assert keys.index("miou") < keys.index("worst_iou") < keys.index("iou/a") < keys.index("iou/b") < keys.index("iou/c")
    # numpy input gives the same numbers
    assert evaluation_metrics(cm.numpy(), ("a", "b", "c"), ["worst_iou"])["worst_iou"] == m["worst_iou"]


def test_metrics_reject_bad_input():
    cm = torch.tensor([[3, 1, 0], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="every IoU is NaN"):
        evaluation_metrics(torch.zeros(3, 3, dtype=torch.int64), ("a", "b", "c"), ["miou"])
    with pytest.raises(ValueError, match="2 class names for a 3-class"):
        evaluation_metrics(cm, ("a", "b"), [])
    with pytest.raises(ValueError, match="unknown objective|not registered|nope"):
        evaluation_metrics(cm, ("a", "b", "c"), ["nope"])
    # an objective that is not finite stops the evaluation, naming it
    register_objective("test_evaluation_nan", "max", override=True)(lambda iou: float("nan"))
    with pytest.raises(ValueError, match="test_evaluation_nan.*non-finite"):
        evaluation_metrics(cm, ("a", "b", "c"), ["miou", "test_evaluation_nan"])
