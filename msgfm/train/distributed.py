"""Process-group setup for single-process and torchrun/srun multi-process training.

torchrun (started by msgfm.train.launch) sets RANK, LOCAL_RANK and WORLD_SIZE; nothing is
passed on the command line (no ``--local_rank``). CPU runs use gloo, GPU runs NCCL. A
single-node launch meets through a file store (``MSGFM_DIST_INIT``), so no TCP store listens on
the node's network; several nodes meet at torchrun's store (``env://``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from msgfm.errors import MsgfmError


@dataclass(frozen=True)
class DistContext:
    """Who this process is and where its tensors live."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, writes checkpoints and talks to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment, if any.

    ``device``: "auto" picks this process's GPU when CUDA is available, else the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            init_method=os.environ.get("MSGFM_DIST_INIT", "env://"),
            rank=rank,
            world_size=world_size,
        )
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def check_world_size(expected: int | None, ctx: DistContext) -> None:
    """The launcher must start the processes the job's config (its identity) counts on: the
    world size sets the global batch. ``None``: a config that does not say (a job run by hand)."""
    if expected is not None and expected != ctx.world_size:
        raise MsgfmError(
            f"the job's config says world_size {expected} (pretrain.nodes x gpus_per_node, or "
            f"finetune.gpus) but {ctx.world_size} process(es) were started: set the counts in "
            "the workflow config, not in a profile's resources"
        )


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(metrics: Mapping[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Each metric averaged over the ranks that have it, in one all-reduce (a logging step).

    Ranks may hold different keys: a rank whose batch drew no cross-sensor pair has no cross
    loss. Reducing key by key would then pair different collectives across ranks and hang, so
    the union of keys is agreed first and absent ones count zero times.
    """
    if not ctx.distributed:
        return {name: float(value) for name, value in metrics.items()}
    names = sorted(set().union(*gather_objects(sorted(metrics), ctx)))
    zero = torch.zeros((), device=ctx.device)
    sums = torch.stack([metrics[n].detach().float().to(ctx.device) if n in metrics else zero
                        for n in names])  # fmt: skip
    counts = torch.tensor([float(n in metrics) for n in names], device=ctx.device)
    packed = torch.stack([sums, counts])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    means = (packed[0] / packed[1].clamp_min(1)).tolist()
    return dict(zip(names, means, strict=True))


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """True on every rank if it is true on any: a SIGTERM seen by one rank stops all of them."""
    if not ctx.distributed:
        return flag
    return any_rank(torch.tensor(flag, device=ctx.device), ctx)


def any_rank(flag: torch.Tensor, ctx: DistContext) -> bool:
    """Whether the scalar ``flag`` (bool or 0/1, on any device) is true on any rank, the same
    answer everywhere. Reading it is a host sync: callers ask every N steps, not every step."""
    value = flag.detach().to(ctx.device, torch.float32).reshape(1)
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(value: object, ctx: DistContext) -> list[object]:
    """Every rank's ``value`` in rank order, on every rank (``[value]`` in a single process)."""
    if not ctx.distributed:
        return [value]
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered
