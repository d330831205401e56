"""All-gathers that write into their output alone, for gloo.

ZeRO-3 and FSDP2 gather every parameter with ``all_gather_into_tensor``. NCCL writes straight
into the output tensor. Gloo does not: ``ProcessGroupGloo::_allgather_base`` calls ``allgather``,
which gathers into a flat tensor of its own, the size of the output, then copies it out. On CPU
every gather then costs twice the gathered bytes while it runs, and the largest (the LM head:
32 MiB in bf16 for a 16k x 1k head) lands on the rank's peak. Here slot j of the output is
broadcast from rank j instead: the same bytes on the wire, written in place, no second buffer
(for outputs of 1 MiB and more; smaller ones keep gloo's single collective).

Both engines take such a function through a seam of their own: DeepSpeed's comm backend calls
``cdb.all_gather_function`` (``deepspeed.comm.torch.TorchBackend.all_gather_into_tensor``), and
FSDP2 takes an ``AllGather`` through ``FSDPModule.set_custom_all_gather``.

``LAUNCHER_GLOO_GATHER=gloo`` in the launching environment (the ranks inherit it) turns this off
and leaves gloo's own gather in place: the A/B switch of bench/gloo_gather.py, and a way out
should a future torch or DeepSpeed change what these seams expect."""
from __future__ import annotations

import os
from typing import Any, Optional

GATHER_ENV = "LAUNCHER_GLOO_GATHER"  # "in-place" (default) or "gloo"


def gather_in_place(backend: str) -> bool:
    """Whether a rank on ``backend`` gathers parameters in place (gloo, unless turned off)."""
    choice = os.environ.get(GATHER_ENV, "in-place")
    if choice not in ("in-place", "gloo"):
        from launcher.errors import JobError

        raise JobError(f"{GATHER_ENV}={choice!r} in the environment: use in-place (the default) or gloo")
    return backend == "gloo" and choice == "in-place"


class _Works:
    """Several async collectives waited on as one (what DeepSpeed's gather handles and FSDP2
    call ``wait()`` on)."""

    def __init__(self, works: list):
        self.works = works

    def wait(self, timeout: Any = None) -> bool:  # noqa: ARG002 - the process group's timeout applies
        for w in self.works:
            w.wait()
        return True

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)


def gather_into_tensor_by_broadcast(output_tensor, input_tensor, group=None, async_op: bool = False) -> Optional[_Works]:
    """``torch.distributed.all_gather_into_tensor(output_tensor, input_tensor, group, async_op)``,
    written into ``output_tensor`` alone: this rank's slot is filled from ``input_tensor`` (a no-op
    where the caller already placed it there, as FSDP2 and DeepSpeed's coalesced gathers do), then
    each slot is broadcast from the rank that owns it."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    out = output_tensor.view(-1)
    n = input_tensor.numel()
    if out.numel() != n * world:
        raise ValueError(f"all_gather_into_tensor: output has {out.numel()} elements, expected {world} x {n}")
    slots = [out.narrow(0, j * n, n) for j in range(world)]
    if slots[rank].data_ptr() != input_tensor.data_ptr():
        slots[rank].copy_(input_tensor.reshape(-1))
    src = [j if group is None else dist.get_global_rank(group, j) for j in range(world)]
    works = _Works([dist.broadcast(slots[j], src=src[j], group=group, async_op=True) for j in range(world)])
    if async_op:
        return works
    works.wait()
    return None


IN_PLACE_MIN_BYTES = 1 << 20  # smaller gathers keep gloo's one collective: its copy is under 1 MiB


def gather_into_tensor(output_tensor, input_tensor, group=None, async_op: bool = False):
    """What the engines call on gloo: outputs of ``IN_PLACE_MIN_BYTES`` and more are gathered in
    place (:func:`gather_into_tensor_by_broadcast`: one broadcast per rank, no second buffer);
    smaller ones by gloo's own gather, one collective whose latency is what counts there
    (with every gather in place, the embedded default's small model ran FSDP2 measurably slower)."""
    if output_tensor.numel() * output_tensor.element_size() >= IN_PLACE_MIN_BYTES:
        return gather_into_tensor_by_broadcast(output_tensor, input_tensor, group=group, async_op=async_op)
    import torch.distributed as dist

    native = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    return native(output_tensor, input_tensor, group=group, async_op=async_op)


def use_in_place_gathers_in_deepspeed(deepspeed_comm_backend) -> bool:
    """Route DeepSpeed's ``all_gather_into_tensor`` (ZeRO-3's parameter gathers, ZeRO 1-2's
    gather of the updated partitions) through :func:`gather_into_tensor`. Call on gloo only;
    returns whether the backend had the hook."""
    if getattr(deepspeed_comm_backend, "all_gather_function", None) is None:
        return False
    deepspeed_comm_backend.all_gather_function = gather_into_tensor
    return True


def fsdp_in_place_all_gather():
    """An FSDP2 ``AllGather`` (``FSDPModule.set_custom_all_gather``) that gathers by
    :func:`gather_into_tensor` into a plain ``torch.empty`` buffer."""
    import torch
    from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather

    class InPlaceAllGather(AllGather):
        def allocate(self, size, *, dtype, device):
            return torch.empty(size, dtype=dtype, device=device)

        def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
            return gather_into_tensor(output_tensor, input_tensor, group=group, async_op=async_op)

    return InPlaceAllGather()


__all__ = ["GATHER_ENV", "IN_PLACE_MIN_BYTES", "fsdp_in_place_all_gather", "gather_in_place", "gather_into_tensor",
           "gather_into_tensor_by_broadcast", "use_in_place_gathers_in_deepspeed"]
