"""Where this rank sits in its group: torch's env:// variables or LeaderWorkerSet's.

torch: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE.
LeaderWorkerSet (one pod per rank, the leader is worker 0): LWS_LEADER_ADDRESS,
LWS_GROUP_SIZE, LWS_WORKER_INDEX; the port comes from MASTER_PORT or DEFAULT_PORT.
torch's variables win when both are present.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from statmux.contract import (
    ENV_LOCAL_RANK,
    ENV_LWS_GROUP_SIZE,
    ENV_LWS_LEADER_ADDRESS,
    ENV_LWS_WORKER_INDEX,
    ENV_MASTER_ADDR,
    ENV_MASTER_PORT,
    ENV_RANK,
    ENV_WORLD_SIZE,
)
from statmux.contract import MASTER_PORT as DEFAULT_PORT


class DistEnvError(ValueError):
    """A missing or invalid rendezvous variable; the message names it."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_PORT
    local_rank: int = 0  # which local accelerator this rank uses

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise DistEnvError(f"world size must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise DistEnvError(f"rank {self.rank} is outside [0, {self.world_size})")
        if not 0 < self.master_port < 65536:
            raise DistEnvError(f"port {self.master_port} is outside 1..65535")

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        raise DistEnvError(f"environment variable {name} is not set")
    try:
        value = int(raw)
    except ValueError:
        raise DistEnvError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise DistEnvError(f"environment variable {name}={value} must be at least {minimum}")
    return value


def _port(env: Mapping[str, str]) -> int:
    if env.get(ENV_MASTER_PORT, "").strip() == "":
        return DEFAULT_PORT
    port = _int(env, ENV_MASTER_PORT, 1)
    if port > 65535:
        raise DistEnvError(f"environment variable {ENV_MASTER_PORT}={port} must be at most 65535")
    return port


def dist_info_from_env(env: Mapping[str, str]) -> DistInfo:
    """Read the rendezvous from torch's or LeaderWorkerSet's variables (see module doc)."""
    local_rank = _int(env, ENV_LOCAL_RANK, 0) if env.get(ENV_LOCAL_RANK) else 0
    if ENV_RANK in env or ENV_WORLD_SIZE in env or ENV_MASTER_ADDR in env:
        addr = env.get(ENV_MASTER_ADDR, "").strip()
        if not addr:
            raise DistEnvError(f"environment variable {ENV_MASTER_ADDR} is not set")
        world = _int(env, ENV_WORLD_SIZE, 1)
        rank = _int(env, ENV_RANK, 0)
        if rank >= world:
            raise DistEnvError(f"{ENV_RANK}={rank} must be smaller than {ENV_WORLD_SIZE}={world}")
        return DistInfo(rank, world, addr, _port(env), local_rank)
    if any(k.startswith("LWS_") for k in env):
        addr = env.get(ENV_LWS_LEADER_ADDRESS, "").strip()
        if not addr:
            raise DistEnvError(f"environment variable {ENV_LWS_LEADER_ADDRESS} is not set")
        world = _int(env, ENV_LWS_GROUP_SIZE, 1)
        rank = _int(env, ENV_LWS_WORKER_INDEX, 0)
        if rank >= world:
            raise DistEnvError(
                f"{ENV_LWS_WORKER_INDEX}={rank} must be smaller than {ENV_LWS_GROUP_SIZE}={world}"
            )
        return DistInfo(rank, world, addr, _port(env), local_rank)
    raise DistEnvError(
        "no rendezvous variables: set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE "
        "(or LeaderWorkerSet's LWS_LEADER_ADDRESS, LWS_GROUP_SIZE, LWS_WORKER_INDEX)"
    )
