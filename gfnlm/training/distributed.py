"""torch.distributed for the trainer: one process per device, launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the rendezvous); nothing here
starts processes. With ``WORLD_SIZE`` unset or 1 every helper is a no-op, so the single-process
trainer runs the same code. The backend is NCCL on CUDA and gloo on CPU.

What is distributed, and how:

* prompts: every rank draws the same global prompt order (same seed) and takes its slice;
* rollouts: every rank samples and scores its own share (its own sampling seed);
* gradients: averaged by DDP, or reduce-scattered by FSDP2 (``train.parallel``);
* log Z warm start: residuals are all-gathered, so every rank applies the same shift;
* metrics: reduced across ranks before rank 0 logs them (mean; ``*/min`` and ``*/max`` by min/max).
"""

import datetime
import math
import os

import attrs
import torch
import torch.distributed as dist


@attrs.frozen
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, writes TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is (to be) used."""
        return self.size > 1


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (cheap: joins no group)."""
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_process_group(world: World, device: torch.device) -> None:
    """Join the default process group (once), NCCL for CUDA devices and gloo for CPU."""
    if not world.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # Evaluation and checkpoint writes happen between collectives; give them time.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))


def all_gather_cat(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape everywhere) concatenated along dim 0, in rank order."""
    if not world.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def reduce_metrics(
    metrics: dict[str, float], world: World, device: torch.device
) -> dict[str, float]:
    """Scalar metrics of every rank combined: ``*/min`` by min, ``*/max`` by max, the rest by
    mean."""
    if not world.distributed:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    lowest, highest, total = values.clone(), values.clone(), values.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    reduced = {}
    for i, key in enumerate(keys):
        if key.endswith("/min"):
            reduced[key] = float(lowest[i])
        elif key.endswith("/max"):
            reduced[key] = float(highest[i])
        else:
            reduced[key] = float(total[i]) / world.size
    return reduced


def all_gather_objects(value: object, world: World) -> list[object]:
    """Every rank's picklable ``value``, in rank order."""
    if not world.distributed:
        return [value]
    gathered: list[object] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def shard_fsdp2(module: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 (``fully_shard``) over the policy: each transformer block, then the whole model.

    Every forward pass then all-gathers parameters, so every rank must run the same number of
    passes: the policy is switched to fixed-length decoding (``synced_decoding``, for training
    rollouts and evaluation) and to one pass per row (no shared-prompt pass, whose count depends
    on the batch). log Z stays
    replicated; its gradients are averaged by :func:`average_replicated_grads`.
    """
    from torch.distributed.fsdp import fully_shard

    policy = module.policy
    model = policy.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_types = tuple(getattr(base, "_no_split_modules", None) or ())
    for sub in model.modules():
        if type(sub).__name__ in block_types:
            fully_shard(sub)
    fully_shard(model)
    policy.share_prompts = False
    policy.synced_decoding = True
    return module


def parallelize(
    module: torch.nn.Module, world: World, parallel: str, device: torch.device
) -> torch.nn.Module:
    """DDP or FSDP2 (``parallel``) around ``module`` when run by ``torchrun`` with several
    processes; the module itself in one process."""
    if not world.distributed:
        return module
    if parallel == "fsdp2":
        return shard_fsdp2(module)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )


def average_replicated_grads(params: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of parameters that FSDP2 does not shard (log Z) across ranks."""
    if not world.distributed:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)  # (gloo has no AVG)
            param.grad /= world.size


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the gradients' global L2 norm to ``max_norm``; returns the norm before clipping.

    Works across plain tensors and FSDP2 shards (DTensors, whose norm is reduced over ranks).
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = [torch.linalg.vector_norm(g.detach(), 2) for g in grads]
    squares = [(n.full_tensor() if isinstance(n, DTensor) else n).float() ** 2 for n in norms]
    total = torch.stack(squares).sum().sqrt()
    norm = float(total)
    if math.isfinite(max_norm) and norm + 1e-6 > max_norm:  # as torch.nn.utils.clip_grad_norm_
        for g in grads:
            g.detach().mul_(max_norm / (norm + 1e-6))
    return norm


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world.distributed:
        dist.barrier()


def destroy(world: World) -> None:
    """Leave the process group at the end of a run."""
    if world.distributed and dist.is_initialized():
        # Every rank finishes its collectives first: a rank tearing gloo down while its peer is
        # still in one was seen to leave that peer hanging at exit.
        dist.barrier()
        dist.destroy_process_group()
