"""Data-parallel training under `torchrun`: the process group, sharding and reductions.

Without torchrun every helper here is a no-op for rank 0 of 1, so the training loop has one code
path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ferpipe.core.errors import ParamsError
from ferpipe.model.device import resolve_device


@dataclass(frozen=True)
class Dist:
    """This process's place in a `torchrun` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and logs to MLflow."""
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1), and pick the device.

    Backend NCCL on CUDA (one GPU per process: `cuda:<LOCAL_RANK>`), gloo on the CPU. Without
    torchrun this is `resolve_device(device_name)` and rank 0 of 1.

    Raises:
        ParamsError: as `resolve_device`, or fewer CUDA devices than local processes.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size <= 1:
        return Dist(), device
    import torch.distributed as torch_dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ParamsError(f"train.device: local rank {local_rank} needs a GPU but only "
                              f"{torch.cuda.device_count()} are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(torch_dist.get_rank(), torch_dist.get_world_size()), device


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce(values: torch.Tensor, dist: Dist, op: str = "sum") -> torch.Tensor:
    """Reduce a tensor over all ranks in place (`op` "sum" or "max"); unchanged when not
    distributed."""
    if dist.enabled:
        import torch.distributed as torch_dist

        reduce_op = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX}[op]
        torch_dist.all_reduce(values, op=reduce_op)
    return values


def shard_indices(order: torch.Tensor, batch_size: int, dist: Dist) -> torch.Tensor:
    """This rank's sample indices for one epoch, in step order.

    Args:
        order: int64 (N,), a permutation shared by all ranks (same seed).
        batch_size: the global batch (`train.batch_size`), split evenly over the ranks.

    Returns:
        int64 (steps * batch_size / world_size,): for step s, rank r takes the r-th slice of
        global batch s, so the ranks see disjoint samples and together the same batches a
        single process would; the last partial global batch is dropped.

    Raises:
        ParamsError: the batch size is not divisible by the number of processes.
    """
    if batch_size % dist.world_size:
        raise ParamsError(f"train.batch_size: {batch_size} is not divisible by the "
                          f"{dist.world_size} processes")
    steps = len(order) // batch_size
    per_rank = batch_size // dist.world_size
    return order[:steps * batch_size].view(steps, dist.world_size, per_rank)[:, dist.rank].reshape(-1)


def gather_states(state: torch.Tensor, dist: Dist) -> list[torch.Tensor]:
    """Every rank's generator state (uint8 tensor), in rank order; [state] when not distributed."""
    if not dist.enabled:
        return [state]
    import torch.distributed as torch_dist

    states: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(states, state)
    return states


def wrap_model(model: nn.Module, device: torch.device, dist: Dist = Dist(),
               compile: str | None = None) -> nn.Module:
    """The module the loop calls: `model` wrapped in DistributedDataParallel under torchrun, then
    compiled with `torch.compile` in the mode `compile` names (None: eager; see
    `device.resolve_compile`). Both share `model`'s parameters, so saving `model.state_dict()`
    saves the trained weights."""
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index]
                                        if device.type == "cuda" else None)
    if compile:
        model = torch.compile(model, mode=compile)
    return model
