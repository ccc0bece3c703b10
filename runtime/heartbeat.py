"""Liveness of a group's ranks, through the rendezvous TCPStore rather than the pipeline.

Each worker bumps a counter in the store every `interval` seconds on its own thread (torch
releases the GIL in compute and communication, so a busy rank still beats). The leader
watches the counters: one that stops moving for `timeout` seconds means that rank is gone,
even where no communication call would ever return (a hung NCCL peer). A worker that cannot
reach the store has lost its leader and exits, so no orphan keeps a device.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

log = logging.getLogger(__name__)

_KEY = "statmux/heartbeat/{rank}"


def _client(addr: str, port: int) -> dist.TCPStore:
    return dist.TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=10))


class Heartbeat:
    """A worker's beat; on losing the store it calls `on_lost` (default: exit the process)."""

    def __init__(
        self,
        addr: str,
        port: int,
        rank: int,
        interval: float,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._store = _client(addr, port)
        self._key = _KEY.format(rank=rank)
        self._interval = interval
        self._on_lost = on_lost or (lambda: os._exit(1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statmux-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._store.add(self._key, 1)
            except Exception as err:  # the leader's store is gone: so is the group
                if self._stop.is_set():
                    return
                log.error("heartbeat: lost the group's store (%s); exiting", err)
                self._on_lost()
                return
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()


class HeartbeatMonitor:
    """The leader's watch over ranks 1..world-1; calls `on_dead(rank)` once, then stops."""

    def __init__(
        self,
        addr: str,
        port: int,
        world_size: int,
        interval: float,
        timeout: float,
        on_dead: Callable[[int], None],
    ) -> None:
        self._store = _client(addr, port)
        self._ranks = list(range(1, world_size))
        self._interval = interval
        self._timeout = timeout
        self._on_dead = on_dead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statmux-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        now = time.monotonic()
        seen = {r: (-1, now) for r in self._ranks}
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            for r in self._ranks:
                count = self._store.add(_KEY.format(rank=r), 0)
                last, since = seen[r]
                if count != last:
                    seen[r] = (count, now)
                elif now - since > self._timeout:
                    if not self._stop.is_set():
                        self._on_dead(r)
                    return

    def stop(self) -> None:
        self._stop.set()
