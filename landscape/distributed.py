"""Multi-process training with ``torch.distributed``: environment, process group, data shards.

``torchrun`` (or Slurm's ``srun`` running ``torchrun``) sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`env_from_environ` reads them, and :func:`init_process_group` starts the
process group with the backend that suits the device (NCCL on CUDA, gloo on CPU). Without
``WORLD_SIZE`` in the environment everything here is a no-op for one process, so the same code
runs with and without ``torchrun``.

Data: every rank draws the *same* global batch sequence (same generator, same permutation) and
takes its contiguous slice of each global batch (:func:`shard`, :func:`sharded_batches`,
:class:`GlobalOrderBatchSampler` for user ``Dataset`` objects). The union of the ranks' shards
of a step is exactly the batch one process would see, so a DDP step with per-rank mean losses
(gradients averaged by DDP) equals the one-process step on the global batch.

Example:
    >>> env = env_from_environ({})          # no torchrun: one process
    >>> env.world_size, env.rank, env.is_main, env.distributed
    (1, 0, True, False)
    >>> import torch
    >>> x = torch.arange(8)
    >>> shard(x, rank=1, world_size=2).tolist()
    [4, 5, 6, 7]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """The distributed environment or a sharding request is inconsistent."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``world_size`` processes, this one ``rank`` (``local_rank`` on its node).

    ``distributed`` is True when the environment came from a launcher (``WORLD_SIZE`` set),
    also for ``--nproc_per_node=1``.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, ``run.json`` and logs."""
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str, default: int | None) -> int:
    raw = environ.get(name)
    if raw is None:
        if default is None:
            raise DistributedError(
                f"WORLD_SIZE is set but {name} is not; launch with torchrun (it sets {', '.join(ENV_VARS)})"
            )
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def env_from_environ(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (``os.environ`` by default).

    Without ``WORLD_SIZE``: one process (``DistEnv()``). ``LOCAL_RANK`` defaults to ``RANK``
    (one node).
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return DistEnv()
    world = _int_var(environ, "WORLD_SIZE", None)
    rank = _int_var(environ, "RANK", None)
    local = _int_var(environ, "LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(
            f"inconsistent launcher environment WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: "
            "need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0"
        )
    return DistEnv(world, rank, local, True)


def default_backend(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(env: DistEnv, device: torch.device, backend: str | None = None, timeout_s: float = 1800) -> str:
    """Start the default process group from the launcher's environment (``env://``).

    Returns the backend in use. No-op (returns ``"none"``) for one process without a launcher;
    an already initialised group is kept. On CUDA, call after choosing ``cuda:LOCAL_RANK``.
    """
    if not env.distributed:
        return "none"
    if dist.is_initialized():
        return str(dist.get_backend())
    backend = backend or default_backend(device)
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device(device)
    dist.init_process_group(backend, init_method="env://", world_size=env.world_size, rank=env.rank,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return backend


def destroy_process_group() -> None:
    """Tear down the default process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average tensors across ranks in place, in one collective (flattened); no-op for one process."""
    if not active() or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    with torch.no_grad():
        for t, v in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(v.view_as(t))
    return tensors


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum across ranks (a copy); the input for one process."""
    if not active():
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def reduce_metrics(sums: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Sum per-rank totals (loss sums, correct counts, sample counts) across ranks; one collective.

    Pass *sums*, not means, so ranks with different sample counts weigh correctly. Returns floats.
    """
    keys = list(sums)
    vals = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    if active():
        if dist.get_backend() == "nccl":
            vals = vals.cuda()
        dist.all_reduce(vals)
    return dict(zip(keys, vals.cpu().tolist()))


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (one process: ``obj``)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_ddp(model: nn.Module) -> bool:
    """``model`` is DistributedDataParallel, possibly under ``torch.compile`` (which forwards
    ``no_sync`` to it)."""
    return isinstance(getattr(model, "_orig_mod", model), nn.parallel.DistributedDataParallel)


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` inside an active process group, else ``model`` unchanged.

    ``sync_bn`` converts BatchNorm layers to ``SyncBatchNorm`` first (statistics over the global
    batch; torch supports it on CUDA only). The default keeps per-replica statistics (each
    replica normalizes with its own shard's batch statistics; DDP broadcasts rank 0's running
    statistics at each forward, so all replicas hold rank 0's).
    """
    if not active():
        return model  # one process: the batch statistics are the global batch's anyway
    if sync_bn and torch.device(device).type != "cuda":
        raise DistributedError(
            f"sync_bn=True needs CUDA devices (torch's SyncBatchNorm has no CPU kernel), got device {device}; "
            "use sync_bn=False (per-replica statistics) on CPU"
        )
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


# ------------------------------------------------------------------------------------ data
def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank's contiguous slice of ``n`` items; ``n`` must divide evenly."""
    if n % world_size:
        raise DistributedError(
            f"a global batch of {n} samples does not split evenly over {world_size} processes; "
            f"choose batch_size as a multiple of the world size {world_size}"
        )
    per = n // world_size
    return rank * per, (rank + 1) * per


def shard(t: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank's contiguous slice (along dim 0) of a global batch."""
    start, stop = shard_bounds(t.shape[0], rank, world_size)
    return t[start:stop]


def num_batches(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """Global batches per epoch of :func:`sharded_batches` (the short last batch is kept only if
    it splits evenly over the ranks, or always for one process unless ``drop_last``)."""
    full, rest = divmod(n, batch_size)
    keep_rest = rest > 0 and not drop_last and rest % world_size == 0
    return full + int(keep_rest)


def check_batch_size(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise DistributedError(
            f"batch_size={batch_size} is the global batch and must be a multiple of the world size "
            f"{world_size} (each process gets batch_size / world_size samples)"
        )


def sharded_batches(data, batch_size: int, env: DistEnv, **kwargs) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's shard of each global batch of ``data.batches(batch_size, **kwargs)``.

    ``data`` is an :class:`~landscape.data.ArrayDataset` (anything with ``batches``). Every rank
    draws the same global batches (the generator must be seeded alike on all ranks) and keeps
    its slice, so augmentation draws are the same as in one process too. A short last batch that
    does not split evenly over the ranks is skipped (see :func:`num_batches`).
    """
    check_batch_size(batch_size, env.world_size)
    for x, y in data.batches(batch_size, **kwargs):
        if x.shape[0] % env.world_size:
            continue  # only a short last batch can get here
        yield shard(x, env.rank, env.world_size), shard(y, env.rank, env.world_size)


class GlobalOrderBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batch sampler for a user ``Dataset`` in a ``DataLoader(batch_sampler=...)``.

    Yields this rank's indices of each global batch: the same permutation on every rank (from
    ``seed`` and the epoch, :meth:`set_epoch`), cut into global batches of ``batch_size``, each
    cut into ``world_size`` contiguous shards. With ``world_size=1`` it is the one-process order.

    Example:
        >>> s = GlobalOrderBatchSampler(6, batch_size=4, rank=1, world_size=2, shuffle=False)
        >>> list(s), len(s)  # global batches [0, 1, 2, 3] and [4, 5]; rank 1 gets the second halves
        ([[2, 3], [5]], 2)
    """

    def __init__(self, n: int, batch_size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        check_batch_size(batch_size, world_size)
        if not 0 <= rank < world_size:
            raise DistributedError(f"rank={rank} is outside 0..{world_size - 1}")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """A new permutation per epoch, the same on every rank."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.world_size, self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        for b in range(len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            start, stop = shard_bounds(len(batch), self.rank, self.world_size)
            yield batch[start:stop]
