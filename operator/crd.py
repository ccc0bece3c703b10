"""Generate the ModelSet CustomResourceDefinition from the pydantic schema in placement/spec.py.

The API server needs a *structural* OpenAPI v3 schema: every node has a type, no $ref, no
anyOf/oneOf carrying types, `exclusiveMinimum` as a boolean next to `minimum`. This module
turns pydantic's JSON schema into that form and adds the CEL rules that mirror the
model_validators, the status subresource and the printer columns.

    python -m statmux.operator.crd            # print the CRD YAML
    python -m statmux.operator.crd --write    # rewrite crds/ and the chart's copy
    python -m statmux.operator.crd --check    # exit 1 if a checked-in copy drifted
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from statmux.placement.spec import ModelSetSpec

GROUP = "statmux.io"
VERSION = "v1alpha1"
KIND = "ModelSet"
PLURAL = "modelsets"
SINGULAR = "modelset"
SHORT_NAMES = ["ms"]
CATEGORIES = ["statmux", "all"]

REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_PATHS = (
    Path("crds/modelset.yaml"),
    Path("charts/statmux/crds/modelset.yaml"),
)

# Lists without a bound in pydantic get this one in the CRD: the API server estimates the
# cost of CEL rules from maxItems and rejects unbounded ones that iterate.
DEFAULT_MAX_ITEMS = 4096
# A ModelSet's name prefixes every object it owns ("<name>-<group>-<hash>"); a StatefulSet
# name must leave room for the pod ordinal and the controller-revision-hash label (52 chars).
MAX_NAME_LENGTH = 36
NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"

# Keys of pydantic's JSON schema that a CRD schema may carry over unchanged.
_KEPT = {
    "type",
    "description",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "format",
}


def _exactly_one(fields: list[str]) -> str:
    return " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields) + " == 1"


# CEL rules mirroring the model_validators of placement/spec.py, keyed by the $defs name
# (ModelSetSpec for the spec itself). Messages name the fields, as the pydantic errors do.
CEL_RULES: dict[str, list[dict[str, str]]] = {
    "Workload": [
        {
            "rule": _exactly_one(["perModel", "total", "trace"]),
            "message": "workload: set exactly one of perModel, total or trace",
        }
    ],
    "ProfileRef": [
        {
            "rule": _exactly_one(["builtin", "file", "inline"]),
            "message": "profile: set exactly one of builtin, file or inline",
        }
    ],
    "SLO": [
        {
            "rule": _exactly_one(["latencySeconds", "sloScale"]),
            "message": "slo: set exactly one of latencySeconds or sloScale",
        }
    ],
    "PlacementSpec": [
        {
            "rule": "!has(self.policy) || self.policy != 'manual' || "
            "(has(self.groups) && size(self.groups) > 0)",
            "message": "placement: policy 'manual' needs groups",
        },
        {
            "rule": "!has(self.groups) || size(self.groups) == 0 || "
            "(has(self.policy) && self.policy == 'manual')",
            "message": "placement.groups are only allowed with policy 'manual'",
        },
    ],
    "WeightSource": [
        {
            "rule": "!has(self.source) || self.source != 'huggingface' || has(self.path)",
            "message": "weights: source 'huggingface' needs path (a directory with config.json)",
        }
    ],
    "ModelSetSpec": [
        {
            "rule": "!has(self.placement) || !has(self.placement.groups) || "
            "self.placement.groups.map(g, g.pipelineStages * g.tensorParallel).sum() "
            "<= self.cluster.gpus",
            "message": "placement.groups use more GPUs (pipelineStages × tensorParallel summed) "
            "than cluster.gpus",
        }
    ],
}


# --------------------------------------------------------------------------- conversion
def _strip_null(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` arrives as anyOf[X, {type: null}]; in the CRD it is simply optional."""
    options = node.get("anyOf")
    if not options:
        return node
    rest = [o for o in options if o.get("type") != "null"]
    if len(rest) != 1:
        return node
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    inner = dict(rest[0])
    # The outer node's description wins: it is the field's, the inner one is the type's.
    inner.update({k: v for k, v in merged.items() if k in ("description", "default")})
    return inner


def _convert(
    node: dict[str, Any], defs: dict[str, Any], def_name: str | None = None
) -> dict[str, Any]:
    node = _strip_null(node)
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        target = dict(defs[name])
        if "description" in node:
            target["description"] = node["description"]
        if "default" in node:
            target["default"] = node["default"]
        return _convert(target, defs, name)

    if "anyOf" in node:
        # Only scalar unions remain (free-form config values): keep them unvalidated.
        return {"x-kubernetes-preserve-unknown-fields": True, **_describe(node)}

    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT}
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True
    # Defaults stay pydantic's job (the stored object keeps what the user wrote); the CRD
    # documents them so `kubectl explain` shows them.
    if "default" in node and node["default"] is not None:
        text = out.get("description", "")
        out["description"] = f"{text} (default: {node['default']})".strip()

    kind = node.get("type")
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: _convert(v, defs) for k, v in props.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict):
            value = _convert(extra, defs)
            if "x-kubernetes-preserve-unknown-fields" in value and "type" not in value:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = value
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
        rules = CEL_RULES.get(def_name) if def_name else None
        if rules:
            out["x-kubernetes-validations"] = copy.deepcopy(rules)
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs)
        out.setdefault("maxItems", DEFAULT_MAX_ITEMS)
    elif kind is None and "x-kubernetes-preserve-unknown-fields" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _describe(node: dict[str, Any]) -> dict[str, Any]:
    return {"description": node["description"]} if "description" in node else {}


def spec_schema() -> dict[str, Any]:
    """The structural schema of `.spec`, from ModelSetSpec."""
    raw = ModelSetSpec.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs, "ModelSetSpec")
    schema["description"] = "What to serve, under which load and SLOs, on how many GPUs."
    # Model names identify models across the spec; a map-list makes the API server reject
    # duplicates (mirrors the uniqueness check in ModelSetSpec) and lets apply merge by name.
    models = schema["properties"]["models"]
    models["x-kubernetes-list-type"] = "map"
    models["x-kubernetes-list-map-keys"] = ["name"]
    return schema


def status_schema() -> dict[str, Any]:
    """What the operator writes into `.status` (see statmux.operator.status)."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "maxLength": 64},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string", "maxLength": 128},
            "message": {"type": "string", "maxLength": 32768},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }
    group = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "gpus": {"type": "integer"},
            "pp": {"type": "integer"},
            "tp": {"type": "integer"},
            "models": {"type": "array", "maxItems": 1024, "items": {"type": "string"}},
            "workload": {"type": "string", "description": "the group's StatefulSet or LWS"},
            "pods": {"type": "integer"},
            "readyPods": {"type": "integer"},
            "ready": {"type": "boolean"},
        },
    }
    return {
        "type": "object",
        "description": "Written by the statmux operator.",
        # kopf may record bookkeeping here on clusters where annotations are not usable.
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64"},
            "policy": {"type": "string"},
            "planHash": {"type": "string"},
            "planConfigMap": {"type": "string"},
            "gpus": {"type": "integer", "description": "GPUs the plan uses"},
            "groupCount": {"type": "integer"},
            "readyGroups": {"type": "integer"},
            "predictedAttainment": {
                "type": "number",
                "description": "SLO attainment the simulator predicts for the plan (0..1)",
            },
            "predicted": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "workloadKind": {"type": "string", "enum": ["StatefulSet", "LeaderWorkerSet"]},
            "groups": {"type": "array", "maxItems": DEFAULT_MAX_ITEMS, "items": group},
            "rollout": {
                "type": "object",
                "properties": {
                    "planHash": {"type": "string"},
                    "startedAt": {"type": "string", "format": "date-time"},
                    "retiring": {"type": "array", "maxItems": 4096, "items": {"type": "string"}},
                },
            },
            "conditions": {
                "type": "array",
                "maxItems": 16,
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


def crd_manifest() -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": "A set of DL models served together on shared GPU groups.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters "
                "(it prefixes the names of the group workloads)",
            },
            {
                "rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
                "message": "metadata.name must be a DNS-1035 label: lower-case letters, digits "
                "and '-', starting with a letter (it names Services)",
            },
        ],
    }
    columns = [
        {"name": "GPUs", "type": "integer", "jsonPath": ".status.gpus"},
        {"name": "Groups", "type": "integer", "jsonPath": ".status.groupCount"},
        {
            "name": "Attainment",
            "type": "number",
            "jsonPath": ".status.predictedAttainment",
            "description": "predicted SLO attainment",
        },
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Policy", "type": "string", "jsonPath": ".status.policy", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "statmux", "app.kubernetes.io/part-of": "statmux"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m statmux.operator.crd --write` from placement/spec.py.\n"
    "# Do not edit: tests/operator/test_crd.py fails when this file drifts.\n"
)


def render_crd() -> str:
    body = yaml.safe_dump(crd_manifest(), sort_keys=False, allow_unicode=True, width=100)
    return HEADER + body


def crd_main(argv: list[str] | None = None) -> int:
    """`statmux crd [--write | --check] [--root DIR]`."""
    parser = argparse.ArgumentParser(prog="statmux crd", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the CRD files in the repo")
    mode.add_argument("--check", action="store_true", help="exit 1 if a CRD file drifted")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    text = render_crd()
    if not (args.write or args.check):
        sys.stdout.write(text)
        return 0
    stale = []
    for rel in CRD_PATHS:
        path = args.root / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        else:
            stale.append(str(path))
    if stale:
        print(
            "out of date (run `python -m statmux.operator.crd --write`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(crd_main())
