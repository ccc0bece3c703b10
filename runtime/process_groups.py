"""Rendezvous and the group's process groups, as explicit objects (no module globals).

In the spirit of vLLM's parallel_state: one place that joins the world and creates the
subgroups that the pipeline uses. Every rank joins the default process group through a
TCPStore served by the leader, then creates, in the same order, one TP group per pipeline
stage and the two-rank return group (last stage's TP rank 0 -> the leader). The result is a
`ProcessGroups` value that the caller passes on; nothing is stored in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from statmux.runtime.dist_env import DistInfo
from statmux.runtime.pipeline import Topology


class RendezvousError(RuntimeError):
    """This rank could not join its group (the leader's address, port or peers)."""


@dataclass(frozen=True)
class ProcessGroups:
    """This rank's place in the group and the subgroups it belongs to."""

    topo: Topology
    tp_group: dist.ProcessGroup | None  # this rank's stage's TP group
    return_group: dist.ProcessGroup | None  # [0, last stage's TP rank 0]; None when pp == 1


def join_world(
    dist_info: DistInfo,
    backend: str,
    *,
    rendezvous_timeout_s: float,
    collective_timeout_s: float,
) -> None:
    """Join the default process group through the leader's TCPStore.

    Raises RendezvousError naming the address and this rank's role when it cannot."""
    where = f"{dist_info.master_addr}:{dist_info.master_port}"
    try:
        store = dist.TCPStore(
            dist_info.master_addr,
            dist_info.master_port,
            dist_info.world_size,
            is_master=dist_info.is_leader,
            # the rendezvous waits for pods that may start minutes apart
            timeout=timedelta(seconds=rendezvous_timeout_s),
            wait_for_workers=False,
        )
        dist.init_process_group(
            backend,
            store=store,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            timeout=timedelta(seconds=collective_timeout_s),
        )
    except (RuntimeError, OSError) as err:  # DistError is a RuntimeError
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        role = "serve the rendezvous" if dist_info.is_leader else "reach the leader's rendezvous"
        raise RendezvousError(
            f"rank {dist_info.rank} of {dist_info.world_size} cannot {role} at {where} "
            f"(MASTER_ADDR/MASTER_PORT or LWS_LEADER_ADDRESS): {first}"
        ) from None


def _new_group(ranks: list[int], timeout_s: float) -> dist.ProcessGroup | None:
    """A subgroup (a collective call on every rank); None on ranks outside it.

    `timeout_s` bounds the subgroup's own rendezvous (its store barrier), so a rank whose
    peers never arrive (a restarted rank facing a stale group) gives up instead of hanging."""
    try:
        group = dist.new_group(ranks, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as err:  # DistError and store timeouts
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RendezvousError(
            f"rank {dist.get_rank()} cannot create the subgroup of ranks {ranks} within "
            f"{timeout_s:g} s (--rendezvous-timeout): {first}"
        ) from None
    return group if isinstance(group, dist.ProcessGroup) else None


def create_subgroups(topo: Topology, timeout_s: float = 600.0) -> ProcessGroups:
    """Every rank creates every subgroup, in the same order (new_group is collective)."""
    tp_group = None
    for s in range(topo.pp):
        g = _new_group(topo.stage_ranks(s), timeout_s)
        if s == topo.stage:
            tp_group = g
    return_group = _new_group([0, topo.last_leader], timeout_s) if topo.pp > 1 else None
    return ProcessGroups(topo, tp_group, return_group)


def all_agree(ok: bool, device: torch.device) -> bool:
    """All ranks: True when every rank's `ok` is True (a MIN all-reduce)."""
    flag = torch.tensor([1 if ok else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def leave_world() -> None:
    dist.destroy_process_group()
