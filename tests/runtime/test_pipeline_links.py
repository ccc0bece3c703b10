"""Stage-to-stage sends on CPU: a stage hands its output on without waiting for the next one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from statmux.runtime.local_cluster import free_port
from statmux.runtime.pipeline import Message, Op, SendError, _Sender
from statmux.runtime.stage_timing import StageClock

RANK_SCRIPT = Path(__file__).with_name("links_rank.py")


def test_run_messages_do_not_wait_for_the_next_stage(tmp_path: Path) -> None:
    """Real gloo: three RUN sends return before the next stage posts a receive (a blocking
    send would deadlock the rank script); order and contents arrive intact; a control
    message goes out after the queued work."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    procs = [
        subprocess.Popen(
            [sys.executable, str(RANK_SCRIPT), str(r), str(port), str(tmp_path / f"r{r}.json")],
            env=env,
        )
        for r in (0, 1)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    r0 = json.loads((tmp_path / "r0.json").read_text())
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert r0["sent_callbacks"] == 3  # each queued send reported its time
    assert r1["ops"] == [int(Op.RUN)] * 3 + [int(Op.PING)]
    assert r1["batches"] == [1, 2, 3, 0]
    assert r1["values"][:3] == [[[0.0] * 4], [[1.0] * 4], [[2.0] * 4]]


def test_a_failed_send_fails_every_later_forward() -> None:
    calls: list[int] = []

    def send(msg: Message, dst: int, group: object) -> int:
        calls.append(msg.batch_id)
        if msg.batch_id == 2:
            raise RuntimeError("Connection closed by peer")
        return 5

    sender = _Sender(send)
    sender.put(Message(Op.RUN, 1), 1, None, None)
    sender.put(Message(Op.RUN, 2), 1, None, None)
    sender.put(Message(Op.RUN, 3), 1, None, None)
    with pytest.raises(SendError, match="Connection closed by peer"):
        sender.flush()
    assert calls == [1, 2]  # nothing is sent after a failure
    with pytest.raises(SendError):
        sender.put(Message(Op.RUN, 4), 1, None, None)


def test_stage_clock_adds_from_two_threads() -> None:
    clock = StageClock()

    def add() -> None:
        for _ in range(20000):
            clock.add(0, 1, 1, batches=0)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.totals(0) == (80000, 80000, 0)
