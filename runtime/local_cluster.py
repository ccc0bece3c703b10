"""A whole Plan on one machine: every group's ranks and the router as local processes.

`LocalCluster` is what `statmux up` and `statmux profile` run. For each group of the Plan it
starts pp x tp `statmux runtime` processes with torch's rendezvous variables (one process per
GPU with NCCL, or gloo processes on CPU), then the router in front of the group leaders.

Process hygiene, so that nothing outlives the supervisor:
- every child runs in its own session, so a Ctrl-C in the terminal reaches only the
  supervisor, which then stops the children in order (router, leaders, then workers);
- every child gets PR_SET_PDEATHSIG: if the supervisor is killed outright (SIGKILL), the
  kernel sends each child SIGTERM;
- `stop()` escalates to SIGKILL after a grace period and reaps every child.

A group whose rank dies is stopped as a whole (its other ranks cannot make progress without
it) and reported with the tail of the dead rank's log; the other groups and the router keep
serving.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from statmux.placement.plan import Plan, PlanGroup

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """The cluster cannot start (no GPUs for the ranks, ports, the router)."""


# Ports are picked below Linux's ephemeral range (32768-60999): a port the kernel hands out
# for an outgoing connection (gloo opens many) cannot then take a server's port in between
# our pick and the child's bind.
_PORT_RANGE = (20000, 32000)
_taken: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port that is free now and that this process has not handed out before."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if port not in _taken and not port_in_use(port, host):
            _taken.add(port)
            return port
    raise ClusterError(f"no free port in {_PORT_RANGE[0]}..{_PORT_RANGE[1]}")


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        # As the servers bind (aiohttp and gRPC set SO_REUSEADDR): connections of a previous
        # run in TIME_WAIT do not make the port busy, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def visible_gpus() -> int:
    """GPUs this machine has, without importing torch (nvidia-smi; 0 when absent)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    gpus = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip()]))
    return gpus


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor's thread that forked it exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Proc:
    """One child process and where its output goes."""

    name: str  # g0/rank1, router
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class GroupProcs:
    plan: PlanGroup
    http_port: int
    grpc_port: int
    ranks: list[Proc] = field(default_factory=list)
    state: str = "starting"  # starting | ready | dead | stopped
    reason: str = ""

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


@dataclass
class ClusterOptions:
    device: str = "cpu"  # cpu | cuda
    emulate_device: bool = False
    http_port: int = 8000  # the router's
    grpc_port: int = 8001
    with_router: bool = True
    runtime_args: Sequence[str] = ()  # extra `statmux runtime` flags
    grace_s: float = 20.0  # SIGTERM -> SIGKILL


class LocalCluster:
    """Start, watch and stop every process of a Plan on this machine."""

    def __init__(
        self,
        plan: Plan,
        plan_path: Path,
        workdir: Path,
        options: ClusterOptions | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.plan_path = plan_path
        self.workdir = workdir
        self.options = options or ClusterOptions()
        self.on_event = on_event or (lambda _m: None)
        self.groups: list[GroupProcs] = []
        self.router: Proc | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._watch: threading.Thread | None = None
        self._watch_stop = threading.Event()

    # ------------------------------------------------------------------ start
    def check(self) -> None:
        """What can be known before starting anything: enough GPUs, free router ports."""
        ranks = sum(g.pp * g.tp for g in self.plan.groups)
        if self.options.device == "cuda":
            gpus = visible_gpus()
            if ranks > gpus:
                raise ClusterError(
                    f"the plan needs {ranks} GPUs (one per rank) but this machine has {gpus}; "
                    "use --device cpu, or a plan with fewer GPUs"
                )
        if self.options.with_router:
            for flag, port in (
                ("--http-port", self.options.http_port),
                ("--grpc-port", self.options.grpc_port),
            ):
                if port and port_in_use(port):
                    raise ClusterError(f"{flag} {port}: the port is in use; pick another")

    def start(self) -> None:
        self.check()
        self.workdir.mkdir(parents=True, exist_ok=True)
        total = sum(g.pp * g.tp for g in self.plan.groups)
        env = dict(os.environ)
        if self.options.device == "cpu" and "OMP_NUM_THREADS" not in env:
            # Ranks share the cores: more intra-op threads than cores only adds contention.
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(1, total)))
        gpu = 0
        for g in self.plan.groups:
            procs = GroupProcs(g, free_port(), free_port())
            rendezvous = free_port()
            world = g.pp * g.tp
            for rank in range(world):
                rank_env = dict(env)
                rank_env.update(
                    MASTER_ADDR=HOST,
                    MASTER_PORT=str(rendezvous),
                    RANK=str(rank),
                    WORLD_SIZE=str(world),
                    LOCAL_RANK=str(gpu if self.options.device == "cuda" else 0),
                )
                for k in ("NPROC_PER_NODE", "NODE_RANK"):  # never the pod launcher here
                    rank_env.pop(k, None)
                gpu += 1
                cmd = [
                    sys.executable,
                    "-m",
                    "statmux",
                    "runtime",
                    "--plan",
                    str(self.plan_path),
                    "--group",
                    g.name,
                    "--host",
                    HOST,
                    "--http-port",
                    str(procs.http_port),
                    "--grpc-port",
                    str(procs.grpc_port),
                    "--device",
                    self.options.device,
                    *(["--emulate-device"] if self.options.emulate_device else []),
                    *self.options.runtime_args,
                ]
                procs.ranks.append(self._spawn(f"{g.name}-rank{rank}", cmd, rank_env))
            self.groups.append(procs)
        if self.options.with_router:
            self.router = self._spawn("router", self.router_command(), env)
        self._watch = threading.Thread(target=self._watch_loop, name="statmux-watch", daemon=True)
        self._watch.start()

    def router_command(self) -> list[str]:
        groups = ",".join(f"{g.name}={g.url}" for g in self.groups)
        return [
            sys.executable,
            "-m",
            "statmux",
            "router",
            "--plan",
            str(self.plan_path),
            "--groups",
            groups,
            "--host",
            HOST,
            "--http-port",
            str(self.options.http_port),
            "--grpc-port",
            str(self.options.grpc_port),
        ]

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return Proc(name, popen, log)

    # ------------------------------------------------------------------ state
    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.options.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{HOST}:{self.options.grpc_port}"

    def pids(self) -> list[int]:
        procs = [p for g in self.groups for p in g.ranks]
        if self.router is not None:
            procs.append(self.router)
        return [p.popen.pid for p in procs]

    def refresh(self) -> None:
        """Probe the leaders that are still starting (GET /v2/health/ready)."""
        for g in self.groups:
            if g.state == "starting" and http_ok(g.url + "/v2/health/ready"):
                g.state = "ready"

    def router_ready(self) -> bool:
        if self.router is None:
            return True
        return self.router.alive() and http_ok(f"http://{self.endpoint}/v2/health/ready")

    def ready(self) -> bool:
        self.refresh()
        return all(g.state == "ready" for g in self.groups) and self.router_ready()

    def failed(self) -> str | None:
        """Why the cluster cannot become ready (a dead group or router), or None."""
        dead = [g for g in self.groups if g.state == "dead"]
        if dead:
            return "; ".join(f"group {g.name}: {g.reason}" for g in dead)
        if self.router is not None and not self.router.alive():
            return f"the router exited with status {self.router.popen.returncode}:\n" + log_tail(
                self.router.log
            )
        return None

    def wait_ready(
        self,
        timeout_s: float,
        on_progress: Callable[[LocalCluster], None] | None = None,
        interval_s: float = 0.25,
    ) -> None:
        """Block until every group and the router are ready; ClusterError on death/timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            ready = self.ready()
            if on_progress is not None:
                on_progress(self)
            if ready:
                return
            why = self.failed()
            if why is not None:
                raise ClusterError(why)
            if time.monotonic() > deadline:
                waiting = [g.name for g in self.groups if g.state != "ready"]
                raise ClusterError(
                    f"not ready after {timeout_s:g} s (waiting for: "
                    f"{', '.join(waiting) or 'the router'}); logs in {self.workdir}"
                )
            time.sleep(interval_s)

    # ------------------------------------------------------------------ watch
    def _watch_loop(self) -> None:
        while not self._watch_stop.wait(0.2):
            with self._lock:
                if self._stopping:
                    return
                for g in self.groups:
                    if g.state in ("dead", "stopped"):
                        continue
                    gone = [p for p in g.ranks if not p.alive()]
                    if gone:
                        self._group_died(g, gone[0])

    def _group_died(self, g: GroupProcs, first: Proc) -> None:
        code = first.popen.returncode
        g.state = "dead"
        g.reason = f"{first.name} exited with status {code}"
        tail = log_tail(first.log)
        _terminate([p for p in g.ranks if p.alive()], self.options.grace_s)
        self.on_event(
            f"group {g.name} is down: {g.reason}; its other ranks were stopped "
            f"(log {first.log}):\n{tail}"
        )

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop everything: router, leaders, then any worker left; reap every child."""
        with self._lock:
            self._stopping = True
        self._watch_stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(5)
        first = [self.router] if self.router is not None else []
        first += [g.ranks[0] for g in self.groups if g.ranks]
        _terminate([p for p in first if p.alive()], self.options.grace_s)
        rest = [p for g in self.groups for p in g.ranks[1:]]
        # workers leave on their own once the leader shuts the group down
        _wait_all(rest, min(10.0, self.options.grace_s))
        _terminate([p for p in rest if p.alive()], self.options.grace_s)
        for g in self.groups:
            if g.state != "dead":
                g.state = "stopped"

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_all(procs: Sequence[Proc], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))


def _terminate(procs: Sequence[Proc], grace_s: float) -> None:
    """SIGTERM, wait up to grace_s, then SIGKILL; always reaps."""
    for p in procs:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
    _wait_all(procs, grace_s)
    for p in procs:
        if p.alive():
            with contextlib.suppress(ProcessLookupError):
                p.popen.kill()
        p.popen.wait()
