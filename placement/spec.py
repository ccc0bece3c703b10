"""The ModelSet schema: the one definition that the CLI, the operator and the CRD derive from.

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
The CRD's openAPIV3Schema is generated from these models (see statmux.operator.crd).
Cross-field rules live in `model_validator`s here and are mirrored as CEL rules in the CRD.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from statmux.placement.policy_registry import POLICY_NAMES

API_VERSION = "statmux.io/v1alpha1"
KIND = "ModelSet"

if TYPE_CHECKING:
    Policy = str
else:  # the names of placement/policy_registry.py, in its order (the CRD's enum)
    Policy = Literal[POLICY_NAMES]
TraceFormat = Literal["csv", "azure2019", "azure2021"]
RateSplit = Literal["uniform", "powerLaw"]
# The model families the runtime implements (runtime/families.py checks it has each one).
ARCHITECTURES = ("bert", "gpt2", "llama")
if TYPE_CHECKING:
    Architecture = str
else:
    Architecture = Literal[ARCHITECTURES]
WeightDtype = Literal["float32", "float16", "bfloat16"]


# maxBatchSize: one default and one bound for the ModelSet, its models and the Plan.
DEFAULT_MAX_BATCH_SIZE = 1
MAX_BATCH_SIZE_LIMIT = 256


class SpecError(ValueError):
    """A user mistake in a ModelSet; the message names the field and what is allowed."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )


# --------------------------------------------------------------------------- profiles
class InlineConfigProfile(_Model):
    """Measured latency of one (pp, tp) config: per batch size, one latency per stage."""

    pipeline_stages: int = Field(ge=1, le=64, description="pp: number of pipeline stages")
    tensor_parallel: int = Field(ge=1, le=64, description="tp: tensor-parallel degree")
    stage_latency_s: dict[str, list[Annotated[float, Field(gt=0)]]] = Field(
        description="batch size (as a string key) -> per-stage latency in seconds"
    )
    weight_bytes_per_gpu: list[Annotated[float, Field(ge=0)]] | None = Field(
        default=None,
        description="per-stage weight bytes on each GPU; derived from weightBytes when absent",
    )

    @field_validator("stage_latency_s", mode="before")
    @classmethod
    def _batch_keys_as_strings(cls, v: Any) -> Any:
        # YAML reads `1:` as an integer key; the schema (and JSON) use strings.
        if isinstance(v, dict):
            return {str(k): lat for k, lat in v.items()}
        return v


class ProfileOverheads(_Model):
    """Serving costs outside the per-stage compute, as the runtime's profiler measures them;
    the simulator adds them to every request of the model."""

    request_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="added to every request's latency (front end, router); occupies no GPU",
    )
    stage_seconds: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="added to every pipeline stage after the first (activation transfer)",
    )
    stage_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="every stage's latency is multiplied by 1 + stageFraction * pp",
    )


class InlineProfile(_Model):
    weight_bytes: float = Field(gt=0, description="total weight bytes of the model")
    configs: list[InlineConfigProfile] = Field(min_length=1)
    num_layers: int | None = Field(default=None, ge=1)
    overheads: ProfileOverheads | None = Field(
        default=None, description="per-request and per-stage serving overheads"
    )


ProfileFill = Literal["none", "analytic"]


class ProfileRef(_Model):
    """Exactly one of builtin, file or inline."""

    builtin: str | None = Field(default=None, description="a built-in profile name")
    file: str | None = Field(
        default=None,
        description="path to a profile in YAML or JSON; many models may name the same file "
        "(it is read once)",
    )
    inline: InlineProfile | None = None
    fill: ProfileFill | None = Field(
        default=None,
        description="none: search only the measured (pp, tp) configs; analytic: also "
        "estimate the other configs (up to the model's layer count) with the analytic model. "
        "Default: none for file and inline profiles, analytic for built-ins",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ProfileRef:
        given = [k for k in ("builtin", "file", "inline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of builtin, file or inline (got {', '.join(given) or 'none'})"
            )
        return self


# --------------------------------------------------------------------------- models
class WeightSource(_Model):
    """Where the runtime gets the weights from."""

    source: Literal["synthetic", "huggingface"] = Field(
        default="synthetic",
        description="synthetic: random weights from a config; huggingface: config.json + "
        "safetensors in a local directory",
    )
    architecture: Architecture = "bert"
    path: str | None = Field(default=None, description="directory with config.json + safetensors")
    preset: str | None = Field(
        default=None, description="a named synthetic size, for example bert-1.3b or tiny"
    )
    config: dict[str, int | float | str | bool] | None = Field(
        default=None, description="HF config fields for synthetic weights (override the preset)"
    )
    dtype: WeightDtype = "float16"
    max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        description="the longest input sequence (tokens) one request may carry; longer ones "
        "get 400 / INVALID_ARGUMENT. Default: the config's max_position_embeddings "
        "(n_positions for gpt2). Bounds what a single request can cost the group.",
    )

    @model_validator(mode="after")
    def _path_for_hf(self) -> WeightSource:
        if self.source == "huggingface" and not self.path:
            raise ValueError("source 'huggingface' needs path (a directory with config.json)")
        return self


class SLO(_Model):
    """Either an absolute latency or a multiple of the model's single-GPU batch-1 latency."""

    latency_seconds: float | None = Field(default=None, gt=0)
    slo_scale: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> SLO:
        if (self.latency_seconds is None) == (self.slo_scale is None):
            raise ValueError("set exactly one of latencySeconds or sloScale")
        return self


class ModelSpec(_Model):
    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="DNS-1123 label: lower-case letters, digits and '-'",
    )
    profile: ProfileRef
    weights: WeightSource = Field(default_factory=WeightSource)
    slo: SLO | None = Field(default=None, description="overrides spec.slo for this model")
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
        description="largest batch the runtime forms for this model; default spec.maxBatchSize",
    )


# --------------------------------------------------------------------------- workload
class ModelRate(_Model):
    model: str
    rate: float = Field(ge=0, description="requests per second")
    cv: float = Field(default=1.0, gt=0, description="coefficient of variation of inter-arrivals")


class TotalRate(_Model):
    rate: float = Field(gt=0, description="total requests per second over all models")
    cv: float = Field(default=1.0, gt=0)
    split: RateSplit = "uniform"
    exponent: float = Field(
        default=1.0, ge=0, description="powerLaw: rate of the i-th model ∝ (i+1)^-exponent"
    )


class TraceRef(_Model):
    path: str
    format: TraceFormat
    rate_scale: float = Field(default=1.0, gt=0)
    cv_scale: float = Field(default=1.0, gt=0)
    window_seconds: float = Field(
        default=3600.0, gt=0, description="Gamma fit per time window (Azure traces)"
    )
    start_seconds: float = Field(default=0.0, ge=0)


class Workload(_Model):
    """Exactly one of perModel, total or trace."""

    duration_seconds: float | None = Field(
        default=None,
        gt=0,
        description="seconds of workload to plan for; default: the trace's own span (trace) "
        "or 3600 (perModel, total). A shorter value than a trace's span cuts it (reported)",
    )
    seed: int = Field(default=0, ge=0)
    per_model: list[ModelRate] | None = None
    total: TotalRate | None = None
    trace: TraceRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Workload:
        given = [k for k in ("per_model", "total", "trace") if getattr(self, k) is not None]
        if len(given) != 1:
            names = ", ".join(to_camel(g) for g in given) or "none"
            raise ValueError(f"set exactly one of perModel, total or trace (got {names})")
        return self


# --------------------------------------------------------------------------- cluster
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"  # the CRD checks it too
QUANTITY_HINT = (
    "use a number of bytes with an optional suffix Ki, Mi, Gi, Ti, k, M, G or T, "
    "for example 13Gi, 80G, 512Mi or 1073741824"
)
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_quantity(text: str) -> int:
    """Parse a Kubernetes-style byte quantity ("13Gi", "16G", "1073741824")."""
    m = _QUANTITY.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a byte quantity; {QUANTITY_HINT}")
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


class Cluster(_Model):
    gpus: int = Field(ge=1, le=4096)
    gpu_memory: str = Field(
        default="13Gi",
        pattern=QUANTITY_PATTERN,
        description="memory budget for weights per GPU, e.g. 13Gi",
    )
    gpus_per_node: int = Field(default=8, ge=1, le=64)
    gpu_product: str | None = Field(
        default=None, description="nvidia.com/gpu.product node label to select, if any"
    )

    @property
    def gpu_memory_bytes(self) -> int:
        return parse_quantity(self.gpu_memory)


# --------------------------------------------------------------------------- placement
class ManualGroup(_Model):
    pipeline_stages: int = Field(ge=1, le=64)
    tensor_parallel: int = Field(ge=1, le=64)
    models: list[str] = Field(min_length=1)


class SearchSpec(_Model):
    max_requests: int | None = Field(
        default=None,
        ge=1000,
        description="search on a sample of at most this many requests (windows spread over "
        "the trace) to plan a very long trace faster; the candidates are still compared on "
        "the whole workload. Default: search on the whole workload",
    )
    min_gain_to_replace: float = Field(
        default=0.1,
        ge=0,
        le=100,
        description="percentage points of predicted SLO attainment a re-plan must gain over "
        "the plan in use before it replaces it (and rolls its pods); smaller gains keep the "
        "plan in use. 0: any strictly higher score replaces it. Does not apply to a first plan",
    )


class PlacementSpec(_Model):
    policy: Policy = "statmux"
    search: SearchSpec = Field(default_factory=SearchSpec)
    groups: list[ManualGroup] | None = Field(
        default=None, description="the manual placement; only with policy 'manual'"
    )

    @model_validator(mode="after")
    def _manual_groups(self) -> PlacementSpec:
        if self.policy == "manual" and not self.groups:
            raise ValueError("policy 'manual' needs groups")
        if self.policy != "manual" and self.groups:
            raise ValueError(
                f"groups are only allowed with policy 'manual' (policy is {self.policy!r})"
            )
        return self


# --------------------------------------------------------------------------- the spec
class ModelSetSpec(_Model):
    models: list[ModelSpec] = Field(min_length=1, max_length=1024)
    slo: SLO = Field(default_factory=lambda: SLO(slo_scale=5.0))
    workload: Workload
    cluster: Cluster
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    max_batch_size: int = Field(
        default=DEFAULT_MAX_BATCH_SIZE,
        ge=1,
        le=MAX_BATCH_SIZE_LIMIT,
        description="largest batch the runtime forms per model, unless the model sets its own",
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> ModelSetSpec:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        if self.workload.per_model is not None:
            for r in self.workload.per_model:
                if r.model not in known:
                    raise ValueError(
                        f"workload.perModel names unknown model {r.model!r}; "
                        f"known models: {', '.join(names)}"
                    )
        if self.placement.groups:
            used = 0
            for g in self.placement.groups:
                used += g.pipeline_stages * g.tensor_parallel
                for m in g.models:
                    if m not in known:
                        raise ValueError(
                            f"placement.groups names unknown model {m!r}; "
                            f"known models: {', '.join(names)}"
                        )
            if used > self.cluster.gpus:
                raise ValueError(
                    f"placement.groups use {used} GPUs but cluster.gpus is {self.cluster.gpus}"
                )
        return self

    def slo_for(self, model: ModelSpec) -> SLO:
        return model.slo or self.slo

    def max_batch_size_of(self, model: ModelSpec) -> int:
        """The one meaning of maxBatchSize: the model's own, else the ModelSet's."""
        return model.max_batch_size or self.max_batch_size


class Metadata(_Model):
    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)
    name: str = "modelset"
    namespace: str | None = None


class ModelSet(_Model):
    api_version: Literal["statmux.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ModelSet"]
    metadata: Metadata = Field(default_factory=Metadata)
    spec: ModelSetSpec
    # Present when the object comes from the API server; ignored by the planner.
    status: dict[str, Any] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _meta(cls, v: Any) -> Any:
        return v or {}


# --------------------------------------------------------------------------- loading
def format_validation_error(
    err: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem: the field path, then what is wrong and what is allowed.

    `model` is the validated class: with it, an unknown field lists the allowed ones."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after", "tagged-union"))
        # pydantic adds the validator name to the location of model_validator errors
        loc = re.sub(r"\.?\[?function-(after|before|wrap)\[[^]]*\]\]?", "", loc)
        path = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(model, e["loc"])
        elif e["type"] == "string_pattern_mismatch" and e["ctx"]["pattern"] == QUANTITY_PATTERN:
            msg = f"{e['input']!r} is not a byte quantity; {QUANTITY_HINT}"
        lines.append(f"{path}: {msg}")
    return "\n".join(lines)


def _unknown_field(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> str:
    """ "unknown field; allowed: ...; did you mean ...?" for the model at loc[:-1]."""
    owner = _model_at(model, loc[:-1]) if model is not None else None
    if owner is None:
        return "unknown field"
    allowed = [f.alias or name for name, f in owner.model_fields.items()]
    text = f"unknown field; allowed: {', '.join(allowed)}"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
    return f"{text}; did you mean {close[0]!r}?" if close else text


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class found by following loc's field names and list indices from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):  # a list item
            args = [a for a in get_args(current) if a is not type(None)]
            current = _model_in(args[0]) if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (f.alias, name)), None
        )
        if field is None:
            return None
        current = _model_in(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    """X of X | None (and of list[X] | None): what a location steps into."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def parse_modelset(data: Any, source: str = "ModelSet") -> ModelSet:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with apiVersion, kind and spec")
    try:
        return ModelSet.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(err, model=ModelSet)
        raise SpecError(f"{source} is invalid:\n{message}") from None


def parse_spec(data: Any, source: str = "spec") -> ModelSetSpec:
    """Validate a bare `spec` (what the operator receives)."""
    try:
        return ModelSetSpec.model_validate(data)
    except ValidationError as err:
        message = format_validation_error(err, "spec.", ModelSetSpec)
        raise SpecError(f"{source} is invalid:\n{message}") from None


def load_modelset(path: str | Path) -> ModelSet:
    """Read a ModelSet manifest (YAML or JSON). Relative file paths resolve against it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"cannot read {p}: {err.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{p} is not valid YAML: {err}") from None
    sets = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not sets:
        raise SpecError(f"{p} holds no document with kind: {KIND}")
    if len(sets) > 1:
        raise SpecError(f"{p} holds {len(sets)} ModelSets; pass one per file")
    ms = parse_modelset(sets[0], str(p))
    _resolve_paths(ms.spec, p.parent)
    return ms


def _resolve_paths(spec: ModelSetSpec, base: Path) -> None:
    def resolve(s: str) -> str:
        q = Path(s)
        return str(q if q.is_absolute() else (base / q).resolve())

    for m in spec.models:
        if m.profile.file:
            m.profile.file = resolve(m.profile.file)
        if m.weights.path:
            m.weights.path = resolve(m.weights.path)
    if spec.workload.trace is not None:
        spec.workload.trace.path = resolve(spec.workload.trace.path)
