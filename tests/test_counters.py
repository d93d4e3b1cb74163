"""Rank-local counters reduced over the workers before they are reported (2 gloo
processes, no Ray cluster): tce_ray.train.evaluation.all_reduce_counters and the stochastic-TCE
counters of the worker loop (tce_ray.train.worker_loop.tilt_counters)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tce_ray.train.evaluation import all_reduce_counters

# per rank: skipped reports, dropped reports, actor errors, largest weight age
RANKS = {0: (0, 0, 0, 2), 1: (3, 5, 1, 7)}
PREFETCH = 2


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from tce_ray.train.worker_loop import tilt_counters

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        skipped, dropped, errors, age = RANKS[rank]
        client = SimpleNamespace(reports_dropped=dropped, actor_errors=errors, max_weight_age_steps=age)
        out = {
            "tilt": tilt_counters(skipped, client, PREFETCH),
            "generic": all_reduce_counters(sums={"n": rank + 1, "x": 0.25 * (rank + 1)}, maxes={"m": 10 - rank}),
        }
        with open(os.path.join(out_dir, f"r{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_counters_are_summed_or_maximised_over_two_gloo_workers(tmp_path):
    import tce_ray.train.worker_loop  # noqa: F401 - imported once here (ray, torchvision): the forked workers inherit it

    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    expected = {
        "tilt_reports_skipped": 3, "tilt_reports_dropped": 5, "actor_errors": 1,
        "weights_age_steps_max": 7, "weights_lag_bound_steps": 7 + PREFETCH,
    }
    for rank in (0, 1):  # every rank holds the run's totals (rank 0's metrics are the ones kept)
        out = json.loads((tmp_path / f"r{rank}.json").read_text())
        assert out["tilt"] == expected
        assert out["generic"] == {"n": 3, "x": 0.75, "m": 10}
        assert isinstance(out["generic"]["n"], int)


def test_counters_outside_a_process_group_come_back_as_they_are():
    assert all_reduce_counters(sums={"a": 2}, maxes={"b": 1.5}) == {"a": 2, "b": 1.5}
    assert all_reduce_counters() == {}
