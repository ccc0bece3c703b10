"""`statmux up`: validation before anything starts, a real local cluster, clean shutdown,
and a dead rank stopping only its own group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as th
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from local_modelset import alive, descendants, modelset, write_modelset

from statmux.runtime.local_cluster import free_port
from statmux.runtime.up import up_main

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- before start
def test_bad_modelset_exits_2_naming_the_field_before_any_process(tmp_path, capsys):
    doc = modelset()
    doc["spec"]["placement"]["groups"][0]["pipelineStages"] = 0
    ms = write_modelset(tmp_path / "bad.yaml", doc)
    workdir = tmp_path / "run"
    before = descendants(os.getpid())
    assert up_main([str(ms), "--workdir", str(workdir), "-q"]) == 2
    err = capsys.readouterr().err
    assert "spec.placement.groups.0.pipelineStages" in err and "Traceback" not in err
    assert not workdir.exists()  # nothing was written, so nothing was started
    assert descendants(os.getpid()) == before


def test_unknown_preset_exits_2_before_any_process(tmp_path, capsys):
    doc = modelset()
    doc["spec"]["models"][1]["weights"]["preset"] = "gpt2-huge"
    ms = write_modelset(tmp_path / "bad.yaml", doc)
    assert up_main([str(ms), "--workdir", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "gpt2-a" in err and "'gpt2-huge' is not a gpt2 preset" in err
    assert not (tmp_path / "run").exists()


def test_port_in_use_exits_2(tmp_path, capsys):
    import socket

    ms = write_modelset(tmp_path / "ms.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = up_main(
            [str(ms), "--workdir", str(tmp_path / "run"), "-q", "--http-port", str(port)]
        )
    assert code == 2
    assert f"--http-port {port}: the port is in use" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real cluster
def start_up(ms: Path, workdir: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "statmux", "up", str(ms), "--workdir", str(workdir),
         "--http-port", str(port), "--grpc-port", str(free_port()), "-q", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, port


def wait_ready_line(proc: subprocess.Popen[str], timeout_s: float = 240) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith("ready in"):
            return line
    proc.kill()
    raise AssertionError(f"not ready; stdout {''.join(seen)!r} stderr {proc.stderr.read()!r}")


def infer(url: str, model: str) -> np.ndarray:
    client = th.InferenceServerClient(url)
    ids = np.array([[1, 2, 3, 4]], dtype=np.int64)
    inp = th.InferInput("input_ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    result = client.infer(model, [inp])
    name = result.get_response()["outputs"][0]["name"]
    return result.as_numpy(name)


def group_ports(workdir: Path) -> dict[str, int]:
    """Each group leader's REST port, from its command line in /proc."""
    ports = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode() for a in cmd]
        if "runtime" in args and str(workdir / "plan.json") in args:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"RANK=0" in env:
                ports[args[args.index("--group") + 1]] = int(args[args.index("--http-port") + 1])
    return ports


@pytest.mark.slow
def test_up_serves_every_group_then_sigterm_leaves_no_process(tmp_path):
    ms = write_modelset(tmp_path / "ms.yaml")
    proc, port = start_up(ms, tmp_path / "run")
    try:
        wait_ready_line(proc)
        children = descendants(proc.pid)
        assert len(children) >= 4  # 3 ranks + the router
        for model in ("bert-a", "gpt2-a", "bert-b"):
            out = infer(f"127.0.0.1:{port}", model)
            assert out.shape[:2] == (1, 4) and np.isfinite(out).all()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped every process" in err
    assert [p for p in children if alive(p)] == []


@pytest.mark.slow
def test_a_dead_rank_stops_its_group_and_the_others_keep_serving(tmp_path):
    ms = write_modelset(tmp_path / "ms.yaml")
    workdir = tmp_path / "run"
    proc, port = start_up(ms, workdir)
    try:
        wait_ready_line(proc)
        plan = yaml.safe_load((workdir / "plan.json").read_text())
        pp2 = next(g["name"] for g in plan["groups"] if g["pp"] == 2)
        # the pp2 group's worker: a runtime process of that group with RANK=1
        worker = next(
            int(pid)
            for pid in map(str, descendants(proc.pid))
            if f"--group\0{pp2}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            and b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        )
        leader_ports = group_ports(workdir)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 60
        leader_gone = False
        while time.monotonic() < deadline and not leader_gone:
            leader_gone = not any(
                f"--group\0{pp2}\0".encode() in Path(f"/proc/{p}/cmdline").read_bytes()
                for p in map(str, descendants(proc.pid))
                if alive(int(p))
            )
            time.sleep(0.5)
        assert leader_gone, "the dead rank's leader was not stopped"
        assert proc.poll() is None  # `up` itself keeps running
        # the other group still answers, directly and through the router
        other = next(g for g in leader_ports if g != pp2)
        assert np.isfinite(infer(f"127.0.0.1:{leader_ports[other]}", "bert-b")).all()
        assert np.isfinite(infer(f"127.0.0.1:{port}", "bert-b")).all()
        children = descendants(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: only `up` gets it (children have sessions)
        _, err = proc.communicate(timeout=120)
    assert f"group {pp2} is down: {pp2}-rank1 exited with status -9" in err
    assert proc.returncode == 0
    assert [p for p in children if alive(p)] == []


@pytest.mark.slow
def test_up_with_load_reports_measured_vs_predicted_and_stops(tmp_path):
    """The README's main job (`make demo`): up, a short load through the router, the
    report, everything stopped."""
    ms = write_modelset(tmp_path / "ms.yaml")
    proc, _ = start_up(ms, tmp_path / "run", "--load", "3", "--json")
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    doc = json.loads(out[out.index("\n{\n") + 1 :])  # after the endpoint and examples
    o = doc["overall"]
    assert o["sent"] == doc["predicted"]["requests"] > 0
    assert o["sent"] == o["ok"] + o["rejected"] + o["errors"] and o["errors"] == 0
    assert set(doc["perModel"]) == {"bert-a", "gpt2-a", "bert-b"}
    assert "stopped every process" in err
    assert [p for p in descendants(proc.pid) if alive(p)] == []


def test_a_port_left_in_time_wait_by_a_previous_run_is_free():
    import socket

    from statmux.runtime.local_cluster import port_in_use

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp and gRPC bind
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the side that closes first keeps the port in TIME_WAIT
    client.close()
    assert port_in_use(port)  # still listening
    server.close()
    assert not port_in_use(port)
