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
                log.error(
                    "heartbeat: lost the leader's store (%s); exiting so that the pod group "
                    "restarts as a gang",
                    err,
                )
                self._on_lost()
                return
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()


class HeartbeatMonitor:
    """The leader's watch over ranks 1..world-1; calls `on_dead(rank)` once, then stops.

    A rank whose beat is late by a third of the timeout (at least two intervals) is
    *suspect* (`suspect` is non-empty): the group reports not-ready at once, and fails
    when the beat stays away for the whole timeout."""

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
        self._suspect_after = max(2 * interval, timeout / 3)
        self.suspect: frozenset[int] = frozenset()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statmux-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        now = time.monotonic()
        seen = {r: (-1, now) for r in self._ranks}
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            late = set()
            for r in self._ranks:
                try:
                    count = self._store.add(_KEY.format(rank=r), 0)
                except Exception:  # the store is gone: the leader is shutting down
                    return
                last, since = seen[r]
                if count != last:
                    seen[r] = (count, now)
                elif now - since > self._timeout:
                    if not self._stop.is_set():
                        self._on_dead(r)
                    return
                elif now - since > self._suspect_after:
                    late.add(r)
            if late != self.suspect:
                if late - self.suspect:
                    log.warning(
                        "rank(s) %s: no heartbeat for over %.1f s; not ready",
                        sorted(late - self.suspect),
                        self._suspect_after,
                    )
                self.suspect = frozenset(late)

    def stop(self) -> None:
        self._stop.set()
