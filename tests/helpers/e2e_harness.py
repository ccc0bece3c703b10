"""Drive the local control plane from tests and benchmarks: kubectl, helm, a ServiceAccount
kubeconfig, and the operator as a local process (killable, restartable, logs on disk)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from k8s_tools import CHART, ROOT, bin_dir, binary, run

T = TypeVar("T")
RELEASE = "statmux"
RELEASE_NAMESPACE = "statmux-system"


def wait_until(probe: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll until `probe()` is truthy; its value is returned. Fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})"
            )
        time.sleep(interval)


class Kubectl:
    """kubectl with one kubeconfig; JSON in and out."""

    def __init__(self, kubeconfig: Path) -> None:
        exe = binary("kubectl")
        if exe is None:
            raise RuntimeError(f"no kubectl in {bin_dir()}: run e2e/cluster/build.sh")
        self.exe = exe
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run([self.exe, "--kubeconfig", self.kubeconfig, *args], check, timeout, input)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        ns = ["-n", namespace] if namespace else []
        out = self("get", kind, name, *ns, "-o", "json", "--ignore-not-found", check=False)
        if out.returncode != 0:
            raise AssertionError(out.stderr)
        return json.loads(out.stdout) if out.stdout.strip() else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = self.json(*args)["items"]
        return items

    def apply(
        self, manifest: dict[str, Any] | str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        return self("apply", "-f", "-", *extra, input=text, check=check)

    def server_url_and_ca(self) -> tuple[str, str]:
        cfg = yaml.safe_load(Path(self.kubeconfig).read_text())
        cluster = cfg["clusters"][0]["cluster"]
        return cluster["server"], cluster["certificate-authority-data"]


def helm(*args: str | Path, kubeconfig: Path, timeout: float = 300) -> str:
    exe = binary("helm")
    if exe is None:
        raise RuntimeError(f"no helm in {bin_dir()}: run e2e/cluster/build.sh helm")
    return run([exe, "--kubeconfig", kubeconfig, *args], timeout=timeout).stdout


def helm_install(kubeconfig: Path, *sets: str) -> str:
    """Install or upgrade the chart as release `statmux` in statmux-system."""
    args: list[str | Path] = [
        "upgrade",
        "--install",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "3m",
    ]
    for s in sets:
        args += ["--set", s]
    return helm(*args, kubeconfig=kubeconfig)


def service_account_kubeconfig(
    kubectl: Kubectl, namespace: str, account: str, path: Path, duration: str = "3h"
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token), not admin."""
    token = kubectl(
        "create", "token", account, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    server, ca = kubectl.server_url_and_ca()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {"server": server, "certificate-authority-data": ca},
                    }
                ],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [
                    {
                        "name": account,
                        "context": {"cluster": "local", "user": account, "namespace": namespace},
                    }
                ],
                "current-context": account,
            }
        )
    )
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`statmux operator` (as `python -m statmux operator`) in a child process with its own
    kubeconfig.

    Every start appends to one log file, so a failing test shows the whole history.
    """

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.args = args if args is not None else ["--all-namespaces"]
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    def start(self) -> None:
        assert not self.alive, "the operator is already running"
        self.port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "STATMUX_RESYNC_SECONDS": "1",
            **self.env,
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)  # never pick in-cluster config by accident
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "statmux",  # the `statmux operator` entry point the image runs
                    "operator",
                    *self.args,
                    f"--liveness=http://127.0.0.1:{self.port}/healthz",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log_path.parent,  # not the repo root: nothing there shadows imports
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        if not self.alive:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        def probe() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"the operator exited with {self.proc.returncode}:\n{self.tail()}"
                )
            return self.healthy()

        wait_until(probe, timeout, "the operator's liveness endpoint")

    def kill(self) -> None:
        """SIGKILL: a crash, no cleanup of any kind."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def repo_path(*parts: str) -> Path:
    return ROOT.joinpath(*parts)
