"""An all-gather across data-parallel ranks that autograd sees through (torch.distributed only).

:func:`all_gather_rows` concatenates every rank's 1-D tensor (the ranks may hold different
lengths) in rank order, on every rank. Its backward SUMS the incoming gradients over the
ranks and hands each rank the slice of its own entries. When every rank computes the same
scalar from the gathered vector (e.g. a loss over the global batch), each rank's local
entries thus receive ``world_size`` times the gradient of that scalar, and DDP's gradient
AVERAGE over the ranks gives exactly the gradient of the one-process computation over the
global batch (``torch.distributed.nn.functional.all_gather`` sums the same way, but needs
equal lengths).

Every rank of ``group`` must call it (and the backward) together, as for any collective.
Without an initialised process group, or with one rank, it returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Function

__all__ = ["all_gather_rows", "distributed_world_size"]


def distributed_world_size(group: dist.ProcessGroup | None = None) -> int:
    """The world size of ``group`` (default group), 1 when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return int(dist.get_world_size(group))


def _gather(x: Tensor, group: dist.ProcessGroup | None) -> tuple[Tensor, list[int], int]:
    world = dist.get_world_size(group)
    n = torch.tensor([x.numel()], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n, group=group)
    sizes = [int(s.item()) for s in sizes_t]
    width = max(max(sizes), 1)  # collectives on empty tensors are not portable
    padded = x.new_zeros(width)
    padded[: x.numel()] = x
    parts = [x.new_zeros(width) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes, dist.get_rank(group)


class _AllGatherRows(Function):
    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:  # type: ignore[override]
        out, sizes, rank = _gather(x.detach().contiguous(), group)
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_rows(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's 1-D ``x`` concatenated in rank order (differentiable; see the module doc)."""
    if x.dim() != 1:
        raise ValueError(f"all_gather_rows takes a 1-D tensor, got shape {tuple(x.shape)}")
    if distributed_world_size(group) == 1:
        return x
    if x.requires_grad:
        return _AllGatherRows.apply(x, group)
    return _gather(x.contiguous(), group)[0]
