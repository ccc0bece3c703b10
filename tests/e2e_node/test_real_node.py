"""The ModelSet served for real: the chart's operator runs as a pod on a real node (kubelet,
containerd, runc), the group pods run the project's runtime image (CPU/gloo, told so by the
node's GPU stand-in device plugin), and tritonclient requests reach the models through the
router Service's ClusterIP from inside the node's network namespace.

The steps depend on each other and run in file order (one ModelSet through its life).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from e2e_harness import RELEASE_NAMESPACE, Kubectl, helm_install, wait_until
from k8s_tools import CLUSTER_SCRIPTS

from statmux.placement.spec import WeightSource
from statmux.runtime.checkpoint import build_full_model
from statmux.runtime.presets import resolve_config

# Each step may wait for image starts, torch imports and rendezvous on a loaded 2-core machine.
pytestmark = [pytest.mark.e2e_node, pytest.mark.timeout(1800)]

NODE_NAME = "statmux-node"  # e2e/cluster/node-up.sh
NS = "statmux-node-e2e"
NAME = "real"
TIMEOUT_S = 600  # image start + torch import + rendezvous on a loaded 2-core machine
CLIENT = Path(__file__).with_name("node_client.py")
IDS = np.array([[101, 7, 42, 99, 5, 102], [101, 8, 8, 8, 3, 102]], dtype=np.int64)
# Synthetic weights depend on the config, not the model's name: each model gets its own
# intermediate size, so an answer from the wrong model cannot match the reference.
FFN = {"bert-a": 64, "bert-b": 80, "bert-c": 96, "bert-d": 112}


def weights(name: str) -> dict[str, Any]:
    return {
        "source": "synthetic",
        "architecture": "bert",
        "preset": "tiny",
        "dtype": "float32",
        "config": {"intermediate_size": FFN[name]},
    }


# A profile measured on CPU for a 4-layer BERT (a built-in GPU profile has configs deeper than
# the tiny model's 4 layers, which the operator rightly rejects), inline: the operator pod
# cannot read files of this repository.
PROFILE = Path(__file__).resolve().parents[2] / "examples" / "profiles" / "bert-mini-cpu.yaml"
STATE: dict[str, Any] = {}


def inline_profile() -> dict[str, Any]:
    data = yaml.safe_load(PROFILE.read_text())
    return {k: data[k] for k in ("weightBytes", "numLayers", "configs", "overheads") if k in data}


def model(name: str) -> dict[str, Any]:
    return {"name": name, "profile": {"inline": inline_profile()}, "weights": weights(name)}


def modelset(extra_model: bool = False) -> dict[str, Any]:
    """g0: pp2 across two pods (1 GPU each) serving a and b; g1: one pod serving b and c, so b
    has a second replica while g0 is down. extra_model adds d to g1."""
    names = ["bert-a", "bert-b", "bert-c"] + (["bert-d"] if extra_model else [])
    g1 = ["bert-b", "bert-c"] + (["bert-d"] if extra_model else [])
    return {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "models": [model(n) for n in names],
            # Absolute and far above any latency here: this test checks answers and failover,
            # not SLOs. Admission (router and groups) rejects what it predicts late, and while
            # the pp2 group's pods restart (torch imports on 2 shared cores) the other group
            # falls seconds behind its CPU profile: with a 2 s SLO it rejected most requests.
            "slo": {"latencySeconds": 30.0},
            "maxBatchSize": 2,  # the clients send 2 rows (IDS)
            "workload": {
                "durationSeconds": 30,
                "seed": 1,
                "perModel": [{"model": n, "rate": 1, "cv": 1} for n in names],
            },
            "cluster": {"gpus": 3, "gpuMemory": "13Gi", "gpusPerNode": 1},
            "placement": {
                "policy": "manual",
                "groups": [
                    {"pipelineStages": 2, "tensorParallel": 1, "models": ["bert-a", "bert-b"]},
                    {"pipelineStages": 1, "tensorParallel": 1, "models": g1},
                ],
            },
        },
    }


# --------------------------------------------------------------------------- helpers
def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def ready(kubectl: Kubectl) -> dict[str, Any] | None:
    obj = kubectl.get("modelset", NAME, NS)
    if obj is None:
        return None
    st = obj.get("status") or {}
    c = condition(obj, "Ready")
    ok = (
        c is not None
        and c["status"] == "True"
        and st.get("observedGeneration") == obj["metadata"]["generation"]
        and not (st.get("rollout") or {}).get("retiring")
    )
    return obj if ok else None


def diagnose(kubectl: Kubectl) -> str:
    out = [
        kubectl(
            "get", "modelset,statefulsets,deployments,pods,svc", "-n", NS, "-o", "wide", check=False
        ).stdout
    ]
    obj = kubectl.get("modelset", NAME, NS)
    if obj is not None:
        out.append(yaml.safe_dump(obj.get("status")))
    for pod in kubectl.items("pods", NS) + kubectl.items("pods", RELEASE_NAMESPACE):
        name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
        for cs in pod["status"].get("containerStatuses") or []:
            out.append(f"{name}: {json.dumps(cs.get('state'))}")
            # the apiserver reaches the node's kubelet through node-up.sh's egress proxy
            for prev in ("--previous=false", "--previous=true"):
                logs = kubectl(
                    "logs", "-n", ns, name, "-c", cs["name"], prev, "--tail=30", check=False
                )
                if logs.stdout.strip():
                    out.append(f"--- logs {name}/{cs['name']} {prev}:\n{logs.stdout}")
    out.append(
        kubectl("get", "events", "-n", NS, "--sort-by=.lastTimestamp", check=False).stdout[-4000:]
    )
    return "\n".join(out)


def wait_ready(kubectl: Kubectl, what: str) -> dict[str, Any]:
    try:
        return wait_until(lambda: ready(kubectl), TIMEOUT_S, what, interval=1)
    except AssertionError:
        print(diagnose(kubectl))
        raise


def router_address(kubectl: Kubectl) -> tuple[str, str, str]:
    """(ClusterIP, http port, grpc port or '-') of the ModelSet's router Service."""
    (svc,) = kubectl.items("service", NS, f"statmux.io/modelset={NAME},statmux.io/component=router")
    ports = {p.get("name"): str(p["port"]) for p in svc["spec"]["ports"]}
    return svc["spec"]["clusterIP"], ports["http"], ports.get("grpc", "-")


def in_node(node_pid: int, *args: str, timeout: float = 300) -> Any:
    """Run node_client.py inside the node's network namespace; its JSON answer."""
    cmd = ["nsenter", "-t", str(node_pid), "--net", "--", sys.executable, str(CLIENT), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"node client failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def reference(model_name: str) -> np.ndarray:
    """The same model run in this process (single rank, no parallelism)."""
    source = WeightSource.model_validate(weights(model_name))
    full = build_full_model(resolve_config(source), source)
    ids = torch.from_numpy(IDS)
    with torch.inference_mode():
        # BERT's optional inputs as the server fills them when a request leaves them out
        # (runtime/families.py): attention_mask of ones, token_type_ids of zeros.
        (out,) = full([ids, torch.ones_like(ids), torch.zeros_like(ids)])
    return out.numpy()


def serve_ok(node_pid: int, kubectl: Kubectl, models: list[str]) -> None:
    host, http, grpc = router_address(kubectl)
    got = in_node(node_pid, "infer", host, http, grpc, *models)
    for m in models:
        np.testing.assert_allclose(np.array(got[m]), reference(m), rtol=1e-4, atol=1e-4)


def try_serve(node_pid: int, kubectl: Kubectl, models: list[str]) -> bool:
    try:
        serve_ok(node_pid, kubectl, models)
        return True
    except (AssertionError, subprocess.TimeoutExpired):
        return False


# --------------------------------------------------------------------------- the steps
def test_1_operator_runs_as_a_pod_on_the_real_node(
    node_kubeconfig: Path, node_kubectl: Kubectl
) -> None:
    node = node_kubectl.get("node", NODE_NAME)
    assert node is not None
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    never = [f"image.{w}.pullPolicy=Never" for w in ("operator", "runtime", "router")]
    helm_install(node_kubeconfig, "operator.replicas=1", *never)
    try:
        node_kubectl(
            "rollout",
            "status",
            "deployment",
            "-n",
            RELEASE_NAMESPACE,
            "--timeout=300s",
            timeout=320,
        )
    except AssertionError:
        print(diagnose(node_kubectl))
        raise
    (pod,) = [
        p
        for p in node_kubectl.items("pods", RELEASE_NAMESPACE)
        if p["metadata"].get("deletionTimestamp") is None
    ]
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["spec"]["serviceAccountName"]


def test_2_modelset_becomes_ready_and_serves(node_kubectl: Kubectl, node_pid: int) -> None:
    node_kubectl("create", "namespace", NS, check=False)
    t0 = time.monotonic()
    node_kubectl.apply(modelset())
    wait_ready(node_kubectl, f"ModelSet {NAME} Ready")
    t_ready = time.monotonic() - t0
    wait_until(
        lambda: try_serve(node_pid, node_kubectl, ["bert-a", "bert-b", "bert-c"]),
        TIMEOUT_S,
        "the first successful inference through the router Service",
        interval=2,
    )
    t_first = time.monotonic() - t0
    STATE["figures"] = {
        "apply_to_ready_s": round(t_ready, 1),
        "apply_to_first_inference_s": round(t_first, 1),
    }
    print(f"\nreal node: kubectl apply -> Ready {t_ready:.0f}s, -> first inference {t_first:.0f}s")
    # Every group pod runs on the real node, with the stand-in's answer in its env.
    pods = node_kubectl.items("pods", NS, "statmux.io/component=group")
    assert len(pods) == 3 and {p["spec"]["nodeName"] for p in pods} == {NODE_NAME}


def test_3_a_deleted_pp2_pod_comes_back_and_other_replicas_keep_serving(
    node_kubectl: Kubectl, node_pid: int
) -> None:
    host, http, _ = router_address(node_kubectl)
    # Requests for b (also on g1) and c (only on g1) run while g0 loses a pod.
    loop = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(node_pid),
            "--net",
            "--",
            sys.executable,
            str(CLIENT),
            "loop",
            host,
            http,
            "60",
            "bert-b",
            "bert-c",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(5)
    g0 = [
        p
        for p in node_kubectl.items("pods", NS, "statmux.io/component=group")
        if p["metadata"]["labels"].get("statmux.io/group") == "g0"
    ]
    assert len(g0) == 2, [p["metadata"]["name"] for p in g0]
    victim = sorted(p["metadata"]["name"] for p in g0)[-1]
    old_uids = {p["metadata"]["uid"] for p in g0}
    node_kubectl("delete", "pod", victim, "-n", NS, "--wait=false")

    def recreated() -> bool:
        pods = [
            p
            for p in node_kubectl.items("pods", NS, "statmux.io/component=group")
            if p["metadata"]["labels"].get("statmux.io/group") == "g0"
        ]
        return len(pods) == 2 and not ({p["metadata"]["uid"] for p in pods} >= old_uids)

    wait_until(recreated, TIMEOUT_S, "the pp2 group's pod to be recreated", interval=1)
    wait_ready(node_kubectl, "ModelSet Ready again after the pod deletion")
    wait_until(
        lambda: try_serve(node_pid, node_kubectl, ["bert-a"]),
        TIMEOUT_S,
        "bert-a (only on the pp2 group) to answer again",
        interval=2,
    )
    out, err = loop.communicate(timeout=200)
    assert loop.returncode == 0, err[-3000:]
    result = json.loads(out)
    for m, (ok, failed) in result["counts"].items():
        assert ok > 0 and failed == 0, f"{m}: {ok} answers, {failed} errors: {result['errors']}"


def test_4_an_added_model_rolls_out_and_answers(node_kubectl: Kubectl, node_pid: int) -> None:
    before = node_kubectl.get("modelset", NAME, NS)
    assert before is not None
    node_kubectl.apply(modelset(extra_model=True))
    wait_until(
        lambda: (
            (node_kubectl.get("modelset", NAME, NS) or {})
            .get("status", {})
            .get("observedGeneration")
            == before["metadata"]["generation"] + 1
        ),
        120,
        "the operator to observe the edit",
    )
    wait_ready(node_kubectl, "ModelSet Ready with the added model")
    wait_until(
        lambda: try_serve(node_pid, node_kubectl, ["bert-d", "bert-a"]),
        TIMEOUT_S,
        "the added model bert-d to answer",
        interval=2,
    )


def delete_and_check_gone(kubectl: Kubectl, name: str) -> None:
    kubectl("delete", "modelset", name, "-n", NS, "--wait=true", "--timeout=300s", timeout=320)

    def gone() -> bool:
        left = kubectl(
            "get",
            "statefulsets,deployments,services,configmaps,pods",
            "-n",
            NS,
            "-l",
            f"statmux.io/modelset={name}",
            "-o",
            "name",
            check=False,
        ).stdout.strip()
        return not left

    wait_until(gone, 300, f"every object of ModelSet {name} to be deleted", interval=1)


def test_5_deleting_the_modelset_removes_everything(node_kubectl: Kubectl) -> None:
    delete_and_check_gone(node_kubectl, NAME)
    if "figures" in STATE:
        print(f"\nreal-node figures: {STATE['figures']}")


def test_6_a_crash_looping_group_makes_the_modelset_degraded(node_kubectl: Kubectl) -> None:
    """A user's mistake the operator cannot see: the checkpoint directory is not in the image.
    The runtime container exits non-zero on the real node, again and again; the ModelSet says
    which group fails and the container's reason."""
    name = "broken"
    obj = modelset()
    spec = obj["spec"]
    obj["metadata"]["name"] = name
    missing = {"source": "huggingface", "architecture": "bert", "path": "/models/not-in-image"}
    spec["models"] = [{**model("bert-a"), "weights": {**missing, "dtype": "float32"}}]
    spec["workload"]["perModel"] = [{"model": "bert-a", "rate": 1, "cv": 1}]
    spec["cluster"]["gpus"] = 1
    spec["placement"]["groups"] = [{"pipelineStages": 1, "tensorParallel": 1, "models": ["bert-a"]}]
    node_kubectl.apply(obj)

    def degraded() -> str | None:
        c = condition(node_kubectl.get("modelset", name, NS) or {}, "Degraded") or {}
        msg = str(c.get("message", ""))
        # CrashLoopBackOff (last exit 2: Error), exit 2: Error, or the gang restart's record
        # of it: each names the group and the runtime's exit code (2: a usage error).
        ok = c.get("status") == "True" and c.get("reason") == "GroupFailing"
        return msg if ok and "group g0: " in msg and "exit 2: Error" in msg else None

    t0 = time.monotonic()
    try:
        msg = wait_until(degraded, TIMEOUT_S, f"ModelSet {name} Degraded naming g0", interval=1)
    except AssertionError:
        print(diagnose(node_kubectl))
        raise
    print(f"\nDegraded after {time.monotonic() - t0:.0f}s: {msg}")
    assert "container runtime" in msg
    # the runtime's own one-line reason (terminationMessagePolicy: FallbackToLogsOnError)
    assert "/models/not-in-image" in msg, msg
    delete_and_check_gone(node_kubectl, name)


def _host_state(cluster_dir: str) -> dict[str, list[str]]:
    """What a node setup must never leave behind on the host: links, iptables rules, mounts."""

    def out(*cmd: str) -> list[str]:
        return sorted(
            subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.splitlines()
        )

    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return {
        "links": [line.split(":")[1].strip() for line in out("ip", "-o", "link", "show")],
        "iptables": [r for r in out("iptables-save") if not r.startswith("#")],
        "node mounts": sorted(m for m in mounts if cluster_dir in m),
        # mount points node-up.sh creates when missing (the device-plugin socket dir is fixed)
        "paths": [p for p in ("/var/lib/kubelet", "/var/lib/cni") if Path(p).exists()],
    }


def test_7_a_failed_node_setup_names_its_step_and_leaves_nothing(
    node_kubectl: Kubectl, node_script_env: dict[str, str], tmp_path: Path
) -> None:
    """Last: it stops the lane's node. A setup that fails half way (here: an image that is not
    an OCI layout, after the namespaces, relay, credentials and containerd were started) names
    the step and the cause, and stops everything it had started."""
    cluster_dir = node_script_env["STATMUX_CLUSTER_DIR"]
    subprocess.run([str(CLUSTER_SCRIPTS / "node-down.sh")], env=node_script_env, check=True)
    before = _host_state(cluster_dir)
    not_a_layout = tmp_path / "not-a-layout.oci"
    not_a_layout.mkdir()
    proc = subprocess.run(
        [str(CLUSTER_SCRIPTS / "node-up.sh")],
        env=node_script_env | {"STATMUX_SKIP_BUILD": "1", "STATMUX_NODE_IMAGES": str(not_a_layout)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "ERROR in step 'images: import into the node's containerd'" in proc.stderr, proc.stderr
    assert f"{not_a_layout} is not an OCI layout" in proc.stderr
    assert "== containerd" in proc.stderr  # it did get that far: there was something to stop
    node_dir = Path(cluster_dir) / "node"
    assert not node_dir.exists(), sorted(p.name for p in node_dir.iterdir())
    left = [
        p.name for p in Path("/proc").iterdir() if p.name.isdigit() and str(node_dir) in _cmdline(p)
    ]
    assert left == [], f"processes left running: {left}"
    assert _host_state(cluster_dir) == before
    assert node_kubectl.get("node", NODE_NAME) is None


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""
