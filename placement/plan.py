"""Placements (what the search manipulates) and the Plan (the typed JSON contract).

The Plan is the one contract between placement, operator, router and runtime. Its schema is
defined once, by the pydantic models below; `docs/plan.md` embeds the JSON Schema generated
from them (`statmux plan-schema`). Every part parses a Plan once, at its boundary, with
`Plan.read` / `Plan.parse_json` / `Plan.from_dict`, and then works with typed objects only.

The Plan is self-contained: a pod needs nothing but the Plan to serve its group.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from statmux.placement.profile import ModelProfile, Overheads, ParallelConfig
from statmux.placement.spec import DEFAULT_MAX_BATCH_SIZE, MAX_BATCH_SIZE_LIMIT, WeightSource

PLAN_API_VERSION = "statmux.io/v1alpha1"
PLAN_KIND = "Plan"


# ------------------------------------------------------------------ what the search moves
@dataclass
class Group:
    config: ParallelConfig
    models: list[str] = field(default_factory=list)

    def copy(self) -> Group:
        return Group(self.config, list(self.models))


@dataclass
class Placement:
    groups: list[Group] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return sum(g.config.gpus for g in self.groups)

    def copy(self) -> Placement:
        return Placement([g.copy() for g in self.groups])

    def replicas(self, model: str) -> int:
        return sum(model in g.models for g in self.groups)

    def describe(self) -> str:
        """Compact form like '9x(pp4,tp1) 3x(pp1,tp4)', as the AlpaServe artifact prints."""
        counts: dict[ParallelConfig, int] = {}
        for g in self.groups:
            counts[g.config] = counts.get(g.config, 0) + 1
        return " ".join(f"{n}x(pp{c.pp},tp{c.tp})" for c, n in sorted(counts.items()))


def group_memory_per_gpu(group: Group, profiles: dict[str, ModelProfile]) -> float:
    """Weight bytes on the fullest GPU of the group."""
    total = 0.0
    for m in group.models:
        cp = profiles[m].get(group.config.pp, group.config.tp)
        if cp is None:
            raise KeyError(f"profile {m!r} has no config {group.config}")
        total += cp.weight_bytes_per_gpu
    return total


# ------------------------------------------------------------------ the Plan contract
class PlanError(ValueError):
    """A Plan file or document is unusable; the message names the field."""


class _PlanModel(BaseModel):
    # Unknown keys are ignored so that an older reader accepts a newer Plan (forward
    # compatibility); `apiVersion` changes on breaking changes.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class PlanOverheads(_PlanModel):
    """The profile's serving overheads (statmux.placement.profile.Overheads), carried so that
    the router's and the groups' admission predict what the simulator predicts."""

    request_seconds: float = Field(
        default=0.0,
        ge=0,
        description="added to every request's completion outside the stages (hops, front "
        "ends); counts against the SLO, occupies no stage",
    )
    stage_seconds: float = Field(
        default=0.0, ge=0, description="added to every stage after the first (activation transfer)"
    )
    stage_fraction: float = Field(
        default=0.0, ge=0, description="every stage's latency times (1 + stageFraction x pp)"
    )

    def apply(self, stages: Sequence[float]) -> list[float]:
        """Per-stage latencies with the per-stage overheads added (Overheads.apply)."""
        scale = 1.0 + self.stage_fraction * len(stages)
        return [x * scale + (self.stage_seconds if k else 0.0) for k, x in enumerate(stages)]


def plan_overheads(o: Overheads) -> PlanOverheads | None:
    """A profile's overheads as the Plan carries them (None: it has none)."""
    if not (o.request_seconds or o.stage_seconds or o.stage_fraction):
        return None
    return PlanOverheads(
        request_seconds=o.request_seconds,
        stage_seconds=o.stage_seconds,
        stage_fraction=o.stage_fraction,
    )


class PlanModel(_PlanModel):
    """One model hosted by a group, with everything its ranks need to load and admit it."""

    name: str = Field(min_length=1)
    slo_seconds: float = Field(
        gt=0,
        description="absolute latency SLO: what counts as within the SLO; admission uses it "
        "unless admissionSeconds is set",
    )
    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE,
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
        description="the largest batch the runtime forms for this model (spec.models[]."
        "maxBatchSize, else spec.maxBatchSize); the simulator assumes the same",
    )
    stage_latency_seconds: dict[int, list[float]] = Field(
        description="profile of this group's (pp, tp): batch size (a decimal string in JSON) "
        "-> seconds per stage; a batch between two sizes runs at the next larger one"
    )
    weight_bytes_per_gpu: float = Field(ge=0)
    weights: WeightSource = Field(description="spec.models[].weights, verbatim")
    overheads: PlanOverheads | None = Field(
        default=None,
        description="the profile's serving overheads; the router and the group's admission "
        "add them to stageLatencySeconds as the simulator does (--emulate-device sleeps "
        "stageLatencySeconds alone: the overheads are the real serving path's)",
    )
    admission_seconds: float | None = Field(
        default=None,
        gt=0,
        description="a latency bound below sloSeconds that admission and the queues' "
        "deadlines use instead (absent: sloSeconds). A re-plan sets it when the SLO was "
        "loosened and keeping the previous plan's bound scores higher: the plan then serves "
        "the requests it served before, each within the looser SLO (SLO-aware admission can "
        "otherwise do worse with a looser SLO)",
    )

    @model_validator(mode="after")
    def _admission_below_slo(self) -> PlanModel:
        if self.admission_seconds is not None and self.admission_seconds >= self.slo_seconds:
            raise ValueError(
                f"admissionSeconds ({self.admission_seconds:g}) must be below sloSeconds "
                f"({self.slo_seconds:g}); leave it out to admit by the SLO"
            )
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_admission(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out while unset, so Plans written before the field keep their planHash.
        data: dict[str, Any] = handler(self)
        for key in ("admissionSeconds", "admission_seconds"):
            if key in data and data[key] is None:
                del data[key]
        return data

    @property
    def admission_deadline_seconds(self) -> float:
        """The latency bound admission and the queues use: admissionSeconds, else the SLO."""
        return self.slo_seconds if self.admission_seconds is None else self.admission_seconds

    @field_validator("stage_latency_seconds")
    @classmethod
    def _batches_ascending(cls, v: dict[int, list[float]]) -> dict[int, list[float]]:
        if not v:
            raise ValueError("needs at least batch size 1")
        if min(v) < 1:
            raise ValueError("batch sizes must be >= 1")
        for b, lat in v.items():
            if not lat or any(x <= 0 for x in lat):
                raise ValueError(f"batch {b}: needs one positive latency per stage")
        return dict(sorted(v.items()))

    def stage_latency(self, batch: int) -> list[float]:
        """Per-stage latency at `batch`: a batch between two profiled sizes runs at the next
        larger one; beyond the largest, at the largest."""
        for b, lat in self.stage_latency_seconds.items():
            if b >= batch:
                return lat
        return next(reversed(self.stage_latency_seconds.values()))

    def latency(self, batch: int = 1) -> float:
        """End-to-end latency of one batch through every stage."""
        return float(sum(self.stage_latency(batch)))

    def served_stage_latency(self, batch: int) -> list[float]:
        """`stage_latency` with the per-stage overheads: what a stage takes when served."""
        lat = self.stage_latency(batch)
        return lat if self.overheads is None else self.overheads.apply(lat)

    def served_stage_latency_seconds(self) -> dict[int, list[float]]:
        """The whole table with the per-stage overheads (for the group's admission)."""
        return {b: self.served_stage_latency(b) for b in self.stage_latency_seconds}

    @property
    def request_overhead_seconds(self) -> float:
        return 0.0 if self.overheads is None else self.overheads.request_seconds


class PlanGroup(_PlanModel):
    """One placement group = one pod group: pp x tp ranks hosting several models."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=40)
    gpus: int = Field(ge=1)
    pp: int = Field(ge=1, le=64)
    tp: int = Field(ge=1, le=64)
    memory_per_gpu_bytes: float = Field(ge=0, description="weight bytes on the fullest GPU")
    models: list[PlanModel] = Field(
        min_length=1, description="the models this group serves (a group never idles)"
    )
    latency_source: Literal["measured", "estimated"] = Field(
        default="measured",
        description="measured: every model's profile measured this (pp, tp); estimated: some "
        "latency comes from the analytic model or a scaled profile (profile.fill)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PlanGroup:
        if self.gpus != self.pp * self.tp:
            raise ValueError(f"gpus ({self.gpus}) must equal pp * tp ({self.pp * self.tp})")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique within a group, got {names}")
        for m in self.models:
            for b, lat in m.stage_latency_seconds.items():
                if len(lat) != self.pp:
                    raise ValueError(
                        f"model {m.name!r}: stageLatencySeconds[{b}] has {len(lat)} stages, "
                        f"the group has pp={self.pp}"
                    )
        return self

    @property
    def config(self) -> ParallelConfig:
        return ParallelConfig(self.pp, self.tp)

    def model(self, name: str) -> PlanModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


class PlanCluster(_PlanModel):
    gpus: int = Field(ge=1)
    gpu_memory_bytes: int = Field(ge=1)
    gpus_per_node: int = Field(ge=1)


class LatencyPercentiles(_PlanModel):
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0


class Predicted(_PlanModel):
    """The simulator's forecast for the chosen placement on the full workload."""

    attainment: float = Field(ge=0, le=1)
    goodput: float = 0.0
    requests: int = 0
    latency: LatencyPercentiles = Field(default_factory=LatencyPercentiles)
    per_model: dict[str, float] = Field(default_factory=dict)
    baselines: dict[str, float] = Field(default_factory=dict)


class IncumbentInfo(_PlanModel):
    """What became of the previous plan given to the planner (`statmux plan --previous`, the
    operator's re-plan of a ModelSet that already has a plan)."""

    outcome: Literal["kept", "improved", "replaced", "ignored"] = Field(
        description="kept: no candidate scored more than placement.search.minGainToReplace "
        "above it (ties keep it); improved: the cluster grew or the workload changed, and a "
        "local search from it (which may use the idle GPUs or the extra memory, or move "
        "replicas) scored more than that above it, and no other candidate higher still; "
        "replaced: another candidate scored more than that above it, "
        "or it leaves a model added since unplaced that the search places (reason); ignored: "
        "it does not fit this ModelSet or policy (reason)"
    )
    attainment: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="its predicted SLO attainment on this workload (none when ignored)",
    )
    reason: str = ""


class SearchInfo(_PlanModel):
    seconds: float = 0.0
    simulations: int = 0
    placement: str = ""
    incumbent: IncumbentInfo | None = None


def canonical_json(value: Any) -> bytes:
    """The one serialization every statmux hash is taken over: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def short_hash(value: Any, length: int = 10) -> str:
    """A short sha256 of `value`'s canonical JSON (plan, group and spec hashes)."""
    return hashlib.sha256(canonical_json(value)).hexdigest()[:length]


def plan_hash(groups: Sequence[PlanGroup]) -> str:
    """The one short hash of what the pods run (the groups), used to roll pods on change.

    Everyone (planner, operator, runtime, router) calls this, so the same groups give the
    same hash."""
    return short_hash([g.model_dump(mode="json", by_alias=True) for g in groups])


class Plan(_PlanModel):
    """The contract between placement, operator, router and runtime."""

    api_version: Literal["statmux.io/v1alpha1"] = "statmux.io/v1alpha1"
    kind: Literal["Plan"] = "Plan"
    model_set: str = Field(min_length=1, description="metadata.name of the ModelSet")
    policy: str = Field(description="the policy that produced the groups")
    cluster: PlanCluster
    groups: list[PlanGroup]
    predicted: Predicted
    search: SearchInfo = Field(default_factory=SearchInfo)
    unplaced: list[str] = Field(
        default_factory=list,
        description="models of the ModelSet that no group serves: every request to them fails",
    )
    idle_gpus: int = Field(default=0, ge=0, description="cluster GPUs that no group uses")
    warnings: list[str] = Field(
        default_factory=list, description="what the planner reports, e.g. a truncated trace"
    )
    plan_hash: str = Field(
        default="",
        description="the first 10 hex digits of sha256 over the groups' canonical JSON "
        "(statmux.placement.plan.plan_hash); filled in when empty, checked when given",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        digest = plan_hash(self.groups)
        if not self.plan_hash:
            object.__setattr__(self, "plan_hash", digest)
        elif self.plan_hash != digest:
            raise ValueError(
                f"planHash {self.plan_hash!r} does not match the groups ({digest!r}); "
                "the Plan was edited by hand: drop planHash to recompute it"
            )
        return self

    # ---- reading
    @classmethod
    def from_dict(cls, data: Any, source: str = "plan") -> Plan:
        if not isinstance(data, dict):
            raise PlanError(f"{source}: a Plan is a JSON object, got {type(data).__name__}")
        if data.get("kind") != PLAN_KIND or data.get("apiVersion") != PLAN_API_VERSION:
            hint = ""
            if data.get("kind") == "ModelSet":
                hint = " (this is a ModelSet: make a Plan from it with `statmux plan`)"
            raise PlanError(
                f"{source}: not a statmux Plan: expected kind: {PLAN_KIND} and apiVersion: "
                f"{PLAN_API_VERSION}, got kind: {data.get('kind')!r}, apiVersion: "
                f"{data.get('apiVersion')!r}{hint}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise PlanError(_format_errors(err, source)) from None

    @classmethod
    def parse_json(cls, text: str | bytes, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            import yaml  # a ModelSet YAML is the common mistake: name it

            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError:
                doc = None
            if isinstance(doc, dict):
                return cls.from_dict(doc, source)
            raise PlanError(f"{source}: not JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, source)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as err:
            raise PlanError(f"{path}: cannot read the Plan: {err.strerror}") from None
        return cls.parse_json(text, str(path))

    # ---- writing
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    # ---- views
    @property
    def attainment(self) -> float:
        return self.predicted.attainment

    @property
    def models(self) -> list[str]:
        """Every model the plan serves, in first-seen order."""
        seen: dict[str, None] = {}
        for g in self.groups:
            for m in g.models:
                seen.setdefault(m.name, None)
        return list(seen)

    def group(self, name: str) -> PlanGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise PlanError(f"the plan has no group {name!r}; it has {[g.name for g in self.groups]}")

    def groups_hosting(self, model: str) -> list[PlanGroup]:
        return [g for g in self.groups if any(m.name == model for m in g.models)]

    def placement(self) -> Placement:
        return Placement([Group(g.config, [m.name for m in g.models]) for g in self.groups])

    def unplaced_advice(self) -> str:
        """What would place the unplaced models: more memory or GPUs, except for those the
        planner reports as fitting (`left_out_warning`): more memory does not place them."""
        fit = [
            m
            for m in self.unplaced
            if any(w.startswith(left_out_warning(m)) for w in self.warnings)
        ]
        parts = []
        if rest := [m for m in self.unplaced if m not in fit]:
            parts.append(f"raise cluster.gpuMemory or cluster.gpus for {', '.join(rest)}")
        if fit:
            parts.append(
                f"add GPUs for {', '.join(fit)} (they fit: memory is not what keeps them "
                "out, see the warnings)"
            )
        return "; ".join(parts) + ", or drop models"

    def admission_seconds(self) -> dict[str, float]:
        """The models whose admission uses a bound below their SLO (admissionSeconds)."""
        return {
            m.name: m.admission_seconds
            for g in self.groups
            for m in g.models
            if m.admission_seconds is not None
        }


def left_out_warning(model: str) -> str:
    """How the planner's warning about a model that fits but got no replica begins."""
    return f"model {model!r} gets no replica although it fits"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        lines.append(f"{source}: {loc}: {e['msg']}" if loc else f"{source}: {e['msg']}")
    return "\n".join(lines)


def plan_json_schema() -> dict[str, Any]:
    """The JSON Schema of the Plan, embedded in docs/plan.md (`statmux plan-schema`)."""
    schema = Plan.model_json_schema(by_alias=True)
    for model in [schema, *schema.get("$defs", {}).values()]:
        for prop in model.get("properties", {}).values():
            prop.pop("title", None)  # "Gpuspernode" and the like say nothing the key does not
    return schema
