"""Several processes at the edge of the engine (torch.distributed): rank, world size, device, gradient
synchronisation and collective decisions.  Nothing else in difflab knows there are several processes.

Launch with ``torchrun --nproc_per_node N -m difflab train ...`` (or ``difflab train --nproc N``): gloo on the
CPU, NCCL on CUDA.  A single process needs no launcher and no process group.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place: rank in [0, size), local rank on its node, and the device it trains on."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, logs and previews."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, module: nn.Module, unused: bool = False) -> nn.Module:
        """DistributedDataParallel around ``module`` (its forward computes a loss) when there are several processes;
        ``unused``: some parameters may get no gradient in a step (an extra graph traversal per step)."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)

    def no_sync(self, module: nn.Module, skip: bool) -> ContextManager[Any]:
        """Skip the gradient all-reduce for this backward (all but the last accumulation micro-batch)."""
        return module.no_sync() if skip and self.distributed else nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of a list of floats over all processes (one collective call)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_params(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (parameters outside a DDP-wrapped network)."""
        if self.distributed:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched() -> bool:
    """True when a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | str | None = None) -> World:
    """Join the process group that torchrun describes in the environment (or the one already joined); a single
    process gets World(device=...).  Each CUDA process takes the GPU of its local rank."""
    if not launched():
        return World(device=torch.device(device) if device is not None else default_device())
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank, size, local, dev)


def shutdown(clean: bool = True) -> None:
    """Leave the process group (if one was joined).  After a clean finish all processes leave together (a
    process that closes its connections while a peer still reads from them can make the peer's gloo transport
    abort); after an error no collective is attempted, since the peers may be inside another one."""
    if dist.is_available() and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_threads(nproc: int, cores: int | None = None) -> int:
    """Torch threads per worker of ``--nproc`` on this machine: the usable cores shared out, at least one, so the
    workers never put two busy threads on one core (docs/training.md, "Threads")."""
    return max(1, (usable_cores() if cores is None else cores) // max(1, nproc))


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run ``difflab ARGV`` in nproc worker processes on this machine with torch's elastic launcher, in this process
    (``torch.distributed.launcher.api.elastic_launch``, configured by torchrun's own parser and ``config_from_args``
    exactly as ``torchrun --standalone --nproc_per_node N -m difflab -- ARGV``); returns 0, or the exit status of the
    first worker that failed (128 + N for a signal N).  The arguments follow a ``--``, so the launcher never reads
    an argument of difflab's as an abbreviation of its own (``--num`` of ``--numa-binding``)."""
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "difflab", "--", *argv])
    # what torchrun's run() does for --standalone: a c10d rendezvous on a free local port, a fresh run id
    args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    ours = "OMP_NUM_THREADS" not in os.environ  # torchrun would give each worker one thread
    if ours:
        os.environ["OMP_NUM_THREADS"] = str(worker_threads(nproc))
    try:
        config, cmd, cmd_args = config_from_args(args)
        elastic_launch(config, cmd)(*cmd_args)
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return 128 - code if code < 0 else code or 1
    except SignalException as e:  # this process was told to stop: the launcher has stopped the workers
        return 128 + int(e.sigval)
    finally:
        if ours:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["World", "init", "shutdown", "launched", "relaunch", "default_device", "usable_cores", "worker_threads"]
