"""Image-level TCE over the global batch with 2 gloo processes: after DDP's gradient
average the gradient equals the one-process gradient of eq. 2 over the whole batch."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tce_ray.core.gather import all_gather_rows, distributed_world_size
from tce_ray.core.losses import TiltedCrossEntropy

K, H, W = 4, 5, 6
CASES = [1.0, 3.0, -0.7, 0.0]  # tilts; 0 is the plain mean


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, K, kernel_size=3, padding=1).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """5 images: rank 0 gets 3 (one without any labelled pixel), rank 1 gets 2."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, H, W, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, K, (5, H, W), generator=g)
    y[torch.rand(5, H, W, generator=g) < 0.3] = 255
    y[1] = 255  # nothing labelled
    y[4, :, :4] = 255  # fewer labelled pixels
    return x, y, [3, 2]


def _grads(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _full_batch_grad(t: float) -> tuple[torch.Tensor, float]:
    model = _model()
    x, y, _ = _batch()
    loss = TiltedCrossEntropy(t, "image")(model(x), y)
    loss.backward()
    return _grads(model), loss.item()


def _local_mean_grad(t: float) -> torch.Tensor:
    """The per-worker form: mean over the ranks of each rank's local eq. 2 gradient."""
    x, y, sizes = _batch()
    out, start = [], 0
    for n in sizes:
        model = _model()
        TiltedCrossEntropy(t, "image")(model(x[start : start + n]), y[start : start + n]).backward()
        out.append(_grads(model))
        start += n
    return torch.stack(out).mean(0)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y, sizes = _batch()
        start = sum(sizes[:rank])
        xs, ys = x[start : start + sizes[rank]], y[start : start + sizes[rank]]
        results = {}
        for scope in ("global", "local"):
            for t in CASES:
                model = nn.parallel.DistributedDataParallel(_model())
                loss = TiltedCrossEntropy(t, "image", tilt_scope=scope)(model(xs), ys)
                loss.backward()
                results[(scope, t)] = (_grads(model.module), loss.item())
        # the gather itself: unequal lengths, rank order, gradient summed over ranks
        v = (torch.arange(sizes[rank], dtype=torch.float64) + 10.0 * rank).requires_grad_()
        g = all_gather_rows(v)
        (g * torch.arange(1.0, g.numel() + 1, dtype=torch.float64)).sum().backward()
        results["gather"] = (g.detach(), v.grad.clone())
        results["world"] = distributed_world_size()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(2, str(d / "init"), str(d)), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("t", CASES)
def test_global_scope_gradient_equals_the_full_batch_gradient(two_ranks, t):
    want, want_loss = _full_batch_grad(t)
    for rank in range(2):
        got, loss = two_ranks[rank][("global", t)]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        assert loss == pytest.approx(want_loss, rel=1e-12)


@pytest.mark.parametrize("t", [1.0, 3.0, -0.7])
def test_local_scope_is_the_mean_of_per_worker_gradients_and_differs(two_ranks, t):
    got, _ = two_ranks[0][("local", t)]
    torch.testing.assert_close(got, _local_mean_grad(t), rtol=1e-12, atol=1e-14)
    full, _ = _full_batch_grad(t)
    assert (got - full).norm() > 0.05 * full.norm()  # the objectives really differ here


def test_gather_concatenates_in_rank_order_and_sums_gradients(two_ranks):
    for rank in range(2):
        g, grad = two_ranks[rank]["gather"]
        torch.testing.assert_close(g, torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0], dtype=torch.float64))
        # each rank's scalar is sum_i (i+1) g_i; summed over 2 ranks: 2 (i+1) for its own slice
        want = 2 * torch.arange(1.0, 6.0, dtype=torch.float64)[[0, 1, 2] if rank == 0 else [3, 4]]
        torch.testing.assert_close(grad, want)
        assert two_ranks[rank]["world"] == 2


def test_without_distributed_both_scopes_agree():
    model = _model()
    x, y, _ = _batch()
    a = TiltedCrossEntropy(1.0, "image", tilt_scope="global")(model(x), y)
    b = TiltedCrossEntropy(1.0, "image", tilt_scope="local")(model(x), y)
    assert a.item() == b.item() and math.isfinite(a.item())
    assert distributed_world_size() == 1
    v = torch.ones(3, requires_grad=True)
    assert all_gather_rows(v) is v


def test_bad_scope_and_shape():
    with pytest.raises(ValueError, match="tilt_scope must be 'global'"):
        TiltedCrossEntropy(1.0, "image", tilt_scope="world")
    with pytest.raises(ValueError, match="1-D"):
        all_gather_rows(torch.ones(2, 2))
