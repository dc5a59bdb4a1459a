"""torch.distributed helpers: set-up under torchrun, gathers with gradient, gradient averaging."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Tuple

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "gather_with_grad", "all_reduce_grads", "all_reduce_mean", "barrier",
           "gather_objects"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes (``WORLD_SIZE`` > 1); nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, backend)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of row blocks of any size whose backward sums every rank's gradient for this
    rank's rows: a loss on each rank that reads all ranks' embeddings sends its gradient back to
    the rank that produced them (the reference's gather carries none)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: List[int]) -> torch.Tensor:
        ctx.rank, ctx.sizes, ctx.top = dist.get_rank(), sizes, max(sizes)
        padded = torch.zeros((ctx.top,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        parts: List[torch.Tensor] = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        full = torch.zeros((len(ctx.sizes) * ctx.top,) + tuple(grad.shape[1:]), dtype=grad.dtype, device=grad.device)
        offset = 0
        for r, n in enumerate(ctx.sizes):
            full[r * ctx.top: r * ctx.top + n] = grad[offset: offset + n]
            offset += n
        dist.all_reduce(full, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.top
        return full[start: start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Concatenate ``x`` from every rank in rank order (blocks may differ in rows); gradients flow
    back to each rank's own rows. Returns (gathered, offset of this rank's first row)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes_t = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes_t, n)
    sizes = [int(t.item()) for t in sizes_t]
    return _GatherWithGrad.apply(x, sizes), sum(sizes[: dist.get_rank()])


def all_reduce_grads(params: Iterable[torch.nn.Parameter], world_size: int) -> None:
    """Average gradients over ranks in one flat buffer.

    Parameters the step did not reach have no gradient on any rank (every rank runs the same
    graph) and are left as they are, so the optimizer skips them as in a single process.
    """
    params = [p for p in params if p.requires_grad and p.grad is not None]
    if world_size <= 1 or not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_objects(obj: Any, info: DistInfo) -> List[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    out: List[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
