"""The generated CRD: drift, structural-schema rules, CEL rules, printer columns, and (when
the local control plane is up) acceptance by a real API server."""

from __future__ import annotations

import os
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
import yaml

from statmux.operator import crd
from statmux.placement.spec import ModelSetSpec

ROOT = Path(__file__).resolve().parents[2]


def _walk(node: typing.Any, path: str = ""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            yield from _walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema() -> dict:
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("rel", crd.CRD_PATHS, ids=str)
def test_checked_in_crd_matches_the_pydantic_schema(rel: Path) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} missing: run python -m statmux.operator.crd --write"
    assert path.read_text() == crd.render_crd(), f"{rel} drifted: run ... crd --write"


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crd.crd_main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert crd.crd_main(["--write", "--root", str(tmp_path)]) == 0
    assert crd.crd_main(["--check", "--root", str(tmp_path)]) == 0
    for rel in crd.CRD_PATHS:
        assert yaml.safe_load((tmp_path / rel).read_text())["kind"] == "CustomResourceDefinition"


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable"}
    for path, node in _walk(_schema()):
        assert not forbidden & set(node), f"{path or '.'} keeps {forbidden & set(node)}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "properties" in node:
            assert "additionalProperties" not in node, path
            assert node["type"] == "object", path
            for req in node.get("required", []):
                assert req in node["properties"], f"{path}: required {req} not a property"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if node.get("type") == "array":
            assert "items" in node and "maxItems" in node, f"{path}: arrays need maxItems"


def test_every_pydantic_field_is_in_the_crd() -> None:
    """Each (aliased) field of every model reachable from ModelSetSpec appears in the CRD."""
    raw = ModelSetSpec.model_json_schema(by_alias=True)
    defs = raw["$defs"]
    spec = _schema()["properties"]["spec"]
    assert set(spec["properties"]) == set(raw["properties"])
    assert set(spec["required"]) == set(raw["required"])
    seen = {p.rsplit(".", 1)[-1] for p, _ in _walk(spec)}
    for d in defs.values():
        for field in d.get("properties", {}):
            assert field in seen, field


def test_constraints_carry_over() -> None:
    spec = _schema()["properties"]["spec"]
    model = spec["properties"]["models"]["items"]
    assert model["properties"]["name"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert model["properties"]["name"]["maxLength"] == 63
    assert spec["properties"]["models"]["maxItems"] == 1024
    policy = spec["properties"]["placement"]["properties"]["policy"]
    assert set(policy["enum"]) == {"statmux", "sr", "clockwork++", "alpaserve", "manual"}
    cluster = spec["properties"]["cluster"]
    assert cluster["required"] == ["gpus"]
    assert cluster["properties"]["gpus"]["minimum"] == 1
    assert cluster["properties"]["gpus"]["maximum"] == 4096
    rate = spec["properties"]["workload"]["properties"]["total"]["properties"]["rate"]
    assert rate["minimum"] == 0 and rate["exclusiveMinimum"] is True
    weights = model["properties"]["weights"]["properties"]
    assert weights["config"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "default: synthetic" in weights["source"]["description"]
    # duplicate model names are rejected by the API server itself
    assert spec["properties"]["models"]["x-kubernetes-list-map-keys"] == ["name"]


def _rules_at(node: dict) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_cel_rules_mirror_the_model_validators() -> None:
    schema = _schema()
    spec = schema["properties"]["spec"]
    p = spec["properties"]
    model = p["models"]["items"]["properties"]
    wl = _rules_at(p["workload"])
    assert any("perModel" in r and "total" in r and "trace" in r and "== 1" in r for r in wl)
    prof = _rules_at(model["profile"])
    assert any("builtin" in r and "file" in r and "inline" in r for r in prof)
    for slo in (p["slo"], model["slo"]):
        assert any("latencySeconds" in r and "sloScale" in r for r in _rules_at(slo))
    placement = _rules_at(p["placement"])
    assert any("'manual'" in r and "size(self.groups) > 0" in r for r in placement)
    assert any("size(self.groups) == 0" in r for r in placement)
    assert any("huggingface" in r for r in _rules_at(model["weights"]))
    assert any("sum()" in r for r in _rules_at(spec))
    assert any("metadata.name" in r for r in _rules_at(schema))
    # every message names the field it is about
    for _, node in _walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].split(":")[0].split(" ")[0] in (
                "workload",
                "profile",
                "slo",
                "placement",
                "placement.groups",
                "weights",
                "metadata.name",
            ), rule["message"]


def test_names_status_and_columns() -> None:
    m = crd.crd_manifest()
    assert m["metadata"]["name"] == "modelsets.statmux.io"
    names = m["spec"]["names"]
    assert names["kind"] == "ModelSet" and "ms" in names["shortNames"]
    assert m["spec"]["scope"] == "Namespaced"
    v = m["spec"]["versions"][0]
    assert v["name"] == "v1alpha1" and v["subresources"] == {"status": {}}
    cols = {c["name"]: c for c in v["additionalPrinterColumns"]}
    assert {"GPUs", "Groups", "Attainment", "Ready", "Age"} <= set(cols)
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for c in cols.values():
        path = c["jsonPath"]
        if path.startswith(".status."):
            assert path.split(".")[2].split("[")[0] in status, path
    conds = status["conditions"]
    assert conds["x-kubernetes-list-map-keys"] == ["type"]


def _live_kubeconfig() -> Path | None:
    cfg = Path(os.environ.get("STATMUX_CLUSTER_DIR", "/tmp/statmux-cluster")) / "admin.kubeconfig"
    kubectl = shutil.which("kubectl") or str(cfg.parent / "bin" / "kubectl")
    if not cfg.exists() or not Path(kubectl).exists():
        return None
    ok = subprocess.run(
        [kubectl, f"--kubeconfig={cfg}", "get", "--raw=/readyz"],
        capture_output=True,
        timeout=10,
    )
    return cfg if ok.returncode == 0 else None


@pytest.mark.e2e
def test_api_server_accepts_the_crd(tmp_path: Path) -> None:
    cfg = _live_kubeconfig()
    if cfg is None:
        pytest.skip("no local control plane (make cluster-up)")
    kubectl = shutil.which("kubectl") or str(cfg.parent / "bin" / "kubectl")
    path = tmp_path / "crd.yaml"
    path.write_text(crd.render_crd())
    out = subprocess.run(
        [kubectl, f"--kubeconfig={cfg}", "apply", "--dry-run=server", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr


_VALID = {
    "apiVersion": "statmux.io/v1alpha1",
    "kind": "ModelSet",
    "metadata": {"name": "crd-check", "namespace": "default"},
    "spec": {
        "models": [{"name": "a", "profile": {"builtin": "bert-1.3b"}}],
        "workload": {"total": {"rate": 5}},
        "cluster": {"gpus": 8},
    },
}
_ONE_GROUP = [{"pipelineStages": 1, "tensorParallel": 1, "models": ["a"]}]
# (case, change to the spec, text the API server's message must contain)
_INVALID = [
    ("two workloads", {"workload": {"total": {"rate": 5}, "perModel": []}}, "spec.workload"),
    (
        "two profiles",
        {"models": [{"name": "a", "profile": {"builtin": "x", "file": "y"}}]},
        "profile",
    ),
    ("slo both", {"slo": {"sloScale": 2, "latencySeconds": 1}}, "spec.slo"),
    ("manual without groups", {"placement": {"policy": "manual"}}, "needs groups"),
    ("groups without manual", {"placement": {"groups": _ONE_GROUP}}, "only allowed with policy"),
    (
        "groups over budget",
        {"placement": {"policy": "manual", "groups": _ONE_GROUP * 9}},
        "cluster.gpus",
    ),
    (
        "hf without path",
        {
            "models": [
                {"name": "a", "profile": {"builtin": "x"}, "weights": {"source": "huggingface"}}
            ]
        },
        "weights",
    ),
    ("zero gpus", {"cluster": {"gpus": 0}}, "spec.cluster.gpus"),
    ("zero rate", {"workload": {"total": {"rate": 0}}}, "spec.workload.total.rate"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("case", "change", "text"), _INVALID, ids=[c[0] for c in _INVALID])
def test_api_server_and_pydantic_reject_the_same_specs(
    case: str, change: dict, text: str, tmp_path: Path
) -> None:
    from statmux.placement.spec import SpecError, parse_spec

    cfg = _live_kubeconfig()
    if cfg is None:
        pytest.skip("no local control plane (make cluster-up)")
    kubectl = shutil.which("kubectl") or str(cfg.parent / "bin" / "kubectl")
    subprocess.run(
        [kubectl, f"--kubeconfig={cfg}", "apply", "--server-side", "-f", "-"],
        input=crd.render_crd(),
        text=True,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            kubectl,
            f"--kubeconfig={cfg}",
            "wait",
            "--for=condition=Established",
            "crd/modelsets.statmux.io",
            "--timeout=60s",
        ],
        check=True,
        capture_output=True,
    )

    def dry_run(obj: dict) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kubectl, f"--kubeconfig={cfg}", "apply", "--dry-run=server", "-f", "-"],
            input=yaml.safe_dump(obj),
            text=True,
            capture_output=True,
            timeout=60,
        )

    assert dry_run(_VALID).returncode == 0
    bad = {**_VALID, "spec": {**_VALID["spec"], **change}}
    out = dry_run(bad)
    assert out.returncode != 0 and text in out.stderr, out.stderr
    with pytest.raises(SpecError):
        parse_spec(bad["spec"])
