"""What the router serves: the Plan's groups joined with where each group's leader listens.

The Plan says which group hosts which model, with each model's SLO and stage latencies; the
endpoints say where each group's leader serves REST (`g0=http://host:port`). Locally they come
from `--groups`; in Kubernetes the operator writes them next to the Plan in the router's
ConfigMap (`groups.json`, see statmux.contract.GROUPS_KEY).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from statmux.placement.plan import Plan, PlanError, PlanModel

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


class RouterConfigError(ValueError):
    """A bad --groups value, endpoints file or Plan; the message names what is wrong."""


@dataclass(frozen=True)
class RoutedGroup:
    name: str
    url: str  # http://host:port of the group leader's REST server, no trailing slash
    pp: int
    models: dict[str, PlanModel]

    @property
    def key(self) -> tuple[str, str]:
        """A group is the same group only at the same address (a new workload = new URL)."""
        return (self.name, self.url)


@dataclass(frozen=True)
class RouterConfig:
    plan_hash: str
    groups: tuple[RoutedGroup, ...]  # plan order: ties in dispatch go to the first
    hosts: dict[str, tuple[RoutedGroup, ...]]  # model -> groups hosting it, plan order
    slo_seconds: dict[str, float]  # model -> SLO (the same on every group)
    # model -> the latency admission compares with (PlanModel.admission_deadline_seconds:
    # the SLO, or the Plan's admissionSeconds below it)
    admission_seconds: dict[str, float]
    unrouted: tuple[str, ...] = ()  # plan groups without an endpoint (out of rotation)

    @property
    def models(self) -> list[str]:
        return sorted(self.hosts)


def normalize_url(text: str, where: str) -> str:
    url = text.strip().rstrip("/")
    if not url:
        raise RouterConfigError(f"{where}: empty address")
    if not _SCHEME.match(url):
        url = "http://" + url
    if not url.lower().startswith("http://"):
        raise RouterConfigError(f"{where}: {text!r} must be an http:// address (host:port)")
    host = url[len("http://") :]
    if not host or "/" in host:
        raise RouterConfigError(f"{where}: {text!r} must be host:port with no path")
    return url


def parse_groups_flag(text: str) -> dict[str, str]:
    """`g0=http://127.0.0.1:8001,g1=127.0.0.1:8002` -> {group: url}."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RouterConfigError(
                f"--groups: {item!r} is not GROUP=ADDRESS (e.g. g0=http://127.0.0.1:8001)"
            )
        if name in out:
            raise RouterConfigError(f"--groups: group {name!r} is given twice")
        out[name] = normalize_url(url, f"--groups {name}")
    if not out:
        raise RouterConfigError("--groups: no GROUP=ADDRESS given")
    return out


def parse_groups_json(text: str, source: str) -> dict[str, str]:
    """The endpoints file: a JSON object {group: "http://host:port"}."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RouterConfigError(f"{source}: not JSON: {e}") from None
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise RouterConfigError(f'{source}: must be a JSON object {{"group": "http://host:port"}}')
    return {k: normalize_url(v, f"{source}: group {k!r}") for k, v in doc.items()}


def read_plan(path: str | Path) -> Plan:
    try:
        return Plan.read(path)
    except PlanError as e:
        raise RouterConfigError(str(e)) from None


def build_config(plan: Plan, endpoints: dict[str, str], strict: bool) -> RouterConfig:
    """Join the Plan and the endpoints. `strict`: every plan group needs an endpoint (start-up
    with --groups); otherwise a group without one is left out of rotation and reported."""
    names = [g.name for g in plan.groups]
    extra = sorted(set(endpoints) - set(names))
    if extra:
        raise RouterConfigError(
            f"endpoints name groups the plan does not have: {', '.join(extra)} "
            f"(plan groups: {', '.join(names) or 'none'})"
        )
    missing = [n for n in names if n not in endpoints]
    if strict and missing:
        raise RouterConfigError(
            f"no address for plan group(s) {', '.join(missing)}: give every group as "
            "GROUP=http://host:port"
        )
    groups = tuple(
        RoutedGroup(g.name, endpoints[g.name], g.pp, {m.name: m for m in g.models})
        for g in plan.groups
        if g.name in endpoints
    )
    hosts: dict[str, list[RoutedGroup]] = {}
    for g in groups:
        for m in g.models:
            hosts.setdefault(m, []).append(g)
    # Models whose only hosts have no endpoint are still known (503, not 404).
    slo: dict[str, float] = {}
    admission: dict[str, float] = {}
    for pg in plan.groups:
        for pm in pg.models:
            hosts.setdefault(pm.name, [])
            slo.setdefault(pm.name, pm.slo_seconds)
            admission.setdefault(pm.name, pm.admission_deadline_seconds)
    return RouterConfig(
        plan.plan_hash,
        groups,
        {m: tuple(gs) for m, gs in hosts.items()},
        slo,
        admission,
        tuple(missing),
    )
