"""ModelSet → profiles + workload → placement search → Plan.

This is the one entry point the CLI and the operator call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from statmux.placement.incumbent import (
    improve_budget,
    improved_incumbent,
    incumbent_placement,
    kept_admission,
    new_models,
    unfit_reason,
    worth_improving,
)
from statmux.placement.local_search import improve
from statmux.placement.plan import (
    Group,
    IncumbentInfo,
    LatencyPercentiles,
    Placement,
    Plan,
    PlanCluster,
    PlanGroup,
    PlanModel,
    Predicted,
    SearchInfo,
    group_memory_per_gpu,
    left_out_warning,
    plan_overheads,
)
from statmux.placement.policies import PolicyResult, manual_policy
from statmux.placement.policy_registry import BASELINES, POLICIES, unknown_policy_message
from statmux.placement.profile import ModelProfile, ParallelConfig
from statmux.placement.profiles import profiles_for_spec
from statmux.placement.search_space import (
    Progress,
    SearchProblem,
    sample_workload,
)
from statmux.placement.simulator import SimResult
from statmux.placement.spec import ModelSet, ModelSetSpec, SpecError
from statmux.placement.workload import workload_from_spec

__all__ = ["BASELINES", "evaluate_plan", "plan_modelset", "run_policy"]

log = logging.getLogger("statmux.placement")


@dataclass
class Evaluated:
    policy: str
    result: PolicyResult
    sim: SimResult
    seconds: float
    simulations: int
    # models admitted by a bound below their SLO (the Plan's admissionSeconds): a re-plan
    # keeps the previous plan's when the SLO was loosened and that scores higher
    admission: dict[str, float] = field(default_factory=dict)

    @property
    def attainment(self) -> float:
        if self.result.attainment is not None:
            return self.result.attainment
        return float(self.sim.attainment)


def build_problem(
    spec: ModelSetSpec, progress: Progress | None = None, max_requests: int | None = None
) -> SearchProblem:
    """The search problem of a spec. The search runs on the whole workload unless
    `max_requests` (default: spec.placement.search.maxRequests) asks for a sample."""
    profiles = profiles_for_spec(spec)
    budget = float(spec.cluster.gpu_memory_bytes)
    for m in spec.models:
        _check_fits(m.name, profiles[m.name], budget, spec.cluster.gpus)
    workload = workload_from_spec(spec)
    if len(workload.arrivals) == 0:
        raise SpecError(
            "spec.workload: the workload has no requests; give some model a rate > 0 "
            "or a longer durationSeconds"
        )
    slo = {m.name: _slo_seconds(spec, m.name, profiles[m.name]) for m in spec.models}
    limit = max_requests or spec.placement.search.max_requests
    sample = sample_workload(workload, limit) if limit else workload
    return SearchProblem(
        models=[m.name for m in spec.models],
        profiles=profiles,
        slo=slo,
        workload=sample,
        eval_workload=workload if sample is not workload else None,
        num_gpus=spec.cluster.gpus,
        budget=budget,
        gpus_per_node=spec.cluster.gpus_per_node,
        max_batch_size={m.name: spec.max_batch_size_of(m) for m in spec.models},
        progress=progress,
    )


def _slo_seconds(spec: ModelSetSpec, name: str, profile: ModelProfile) -> float:
    model = next(m for m in spec.models if m.name == name)
    slo = spec.slo_for(model)
    if slo.latency_seconds is not None:
        return slo.latency_seconds
    assert slo.slo_scale is not None
    return slo.slo_scale * profile.single_device_latency


def _check_fits(name: str, profile: ModelProfile, budget: float, gpus: int) -> None:
    usable = [c for c in profile.configs.values() if c.config.gpus <= gpus]
    if not any(c.weight_bytes_per_gpu <= budget for c in usable):
        smallest = min(usable, key=lambda c: c.weight_bytes_per_gpu)
        raise SpecError(
            f"model {name!r} fits no parallel config within cluster.gpuMemory "
            f"({budget / 2**30:.2f} GiB per GPU) on {gpus} GPUs: its smallest per-GPU footprint "
            f"is {smallest.weight_bytes_per_gpu / 2**30:.2f} GiB with {smallest.config}"
        )


def run_policy(problem: SearchProblem, policy: str, spec: ModelSetSpec | None = None) -> Evaluated:
    start = time.perf_counter()
    sims_before = problem.simulations
    entry = POLICIES.get(policy)
    if entry is None:
        raise SpecError(unknown_policy_message(policy))
    result = entry.run(problem, spec)
    seconds = time.perf_counter() - start
    sim = problem.evaluator().run(result.placement)
    return Evaluated(policy, result, sim, seconds, problem.simulations - sims_before)


def manual_placement(problem: SearchProblem, spec: ModelSetSpec | None) -> PolicyResult:
    """Policy 'manual': the ModelSet's placement.groups, checked against the profiles."""
    if spec is None or not spec.placement.groups:
        raise SpecError("spec.placement.groups: policy 'manual' needs groups")
    groups = [
        Group(ParallelConfig(g.pipeline_stages, g.tensor_parallel), list(g.models))
        for g in spec.placement.groups
    ]
    check_manual(problem, groups)
    return manual_policy(problem, groups)


def check_manual(problem: SearchProblem, groups: list[Group]) -> None:
    for i, g in enumerate(groups):
        for m in g.models:
            if problem.profiles[m].get(g.config.pp, g.config.tp) is None:
                raise SpecError(
                    f"spec.placement.groups[{i}]: model {m!r} has no profile for {g.config}"
                )
        used = group_memory_per_gpu(g, problem.profiles)
        if used > problem.budget:
            raise SpecError(
                f"spec.placement.groups[{i}]: models need {used / 2**30:.2f} GiB per GPU with "
                f"{g.config}, over cluster.gpuMemory ({problem.budget / 2**30:.2f} GiB)"
            )


def plan_modelset(
    ms: ModelSet,
    policy: str | None = None,
    baselines: tuple[str, ...] = (),
    progress: Progress | None = None,
    previous: Plan | None = None,
) -> Plan:
    """Plan a ModelSet; raises SpecError for user mistakes.

    `previous`: the plan in use (the incumbent). With the statmux policy it competes with the
    search and the baselines and is kept unless one scores strictly higher, so a re-plan with
    more GPUs, memory or a looser SLO never lowers the attainment (placement/incumbent.py).
    One that does not fit is ignored, with the reason logged and kept in the Plan."""
    spec = ms.spec
    problem = build_problem(spec, progress)
    chosen = run_policy(problem, policy or spec.placement.policy, spec)
    others = [run_policy(problem, b, spec) for b in baselines if b != chosen.policy]
    info: IncumbentInfo | None = None
    if chosen.policy == "statmux":
        min_gain = spec.placement.search.min_gain_to_replace / 100
        chosen, info = best_candidate(problem, chosen, others, previous, min_gain)
    elif previous is not None:
        # another policy is asked for its own answer (manual: the spec's groups)
        info = IncumbentInfo(
            outcome="ignored", reason=f"policy {chosen.policy}: only statmux keeps a previous plan"
        )
    if info is not None and info.outcome == "ignored":
        log.info("ignoring the previous plan: %s", info.reason)
    return make_plan(ms, problem, chosen, others, info)


def best_candidate(
    problem: SearchProblem,
    searched: Evaluated,
    others: list[Evaluated],
    previous: Plan | None,
    min_gain: float = 0.0,
) -> tuple[Evaluated, IncumbentInfo | None]:
    """The best of the search, the previous plan and the static baselines (`never_below`),
    and what became of the previous plan (None: there was none). When the cluster grew or the
    workload changed, the previous plan competes as improved by a bounded local search from
    it, should that score higher; else as it was (ties keep its groups, hence its planHash).
    A candidate replaces the previous plan only when it scores more than `min_gain`
    (attainment, a fraction) above it: a re-plan does not roll pods for a smaller gain."""
    if previous is None:
        return never_below(problem, searched, others), None
    incumbent, info, as_before = score_incumbent(problem, previous, searched)
    improved = None
    if incumbent is not None and worth_improving(problem, previous, as_before):
        improved = improve_incumbent(problem, incumbent, improve_budget(searched.simulations))
    # every candidate that could replace the incumbent, for the reason a small gain gives
    challengers = [c for c in (improved, searched, *static_baselines(others)) if c is not None]
    if improved and incumbent and improved.attainment <= incumbent.attainment + min_gain:
        improved = None
    kept = improved or incumbent
    margin = min_gain if improved is None else 0.0  # improved already cleared the margin
    final = never_below(problem, searched, others, kept, margin)
    if incumbent is not None:
        outcome = "kept" if final is incumbent else "improved" if final is improved else "replaced"
        update: dict[str, object] = {"outcome": outcome}
        if final is incumbent and min_gain > 0:
            near = max(challengers, key=lambda e: e.attainment)
            if near.attainment > incumbent.attainment:
                gain = 100 * (near.attainment - incumbent.attainment)
                why = (
                    f"a new plan scores {gain:.2f} points higher, not more than "
                    f"placement.search.minGainToReplace ({100 * min_gain:g})"
                )
                update["reason"] = f"{info.reason}; {why}" if info.reason else why
        info = info.model_copy(update=update)
    return final, info


def improve_incumbent(
    problem: SearchProblem, incumbent: Evaluated, max_simulations: int
) -> Evaluated | None:
    """The incumbent improved by a bounded local search that may use the idle GPUs and the
    memory it does not use (incumbent.improved_incumbent); None unless it scores strictly
    higher on the whole workload (the search may run on a sample)."""
    start = time.perf_counter()
    sims = problem.simulations
    placement = improved_incumbent(problem, incumbent.result.placement, max_simulations)
    if placement == incumbent.result.placement:
        return None
    sim = problem.evaluator().run(placement)
    problem.simulations += 1
    if sim.attainment <= incumbent.attainment:
        return None
    return Evaluated(
        incumbent.policy,
        PolicyResult(placement, notes={"improvedFrom": "incumbent"}),
        sim,
        incumbent.seconds + time.perf_counter() - start,
        incumbent.simulations + problem.simulations - sims,
    )


def score_incumbent(
    problem: SearchProblem, previous: Plan, searched: Evaluated
) -> tuple[Evaluated | None, IncumbentInfo, float]:
    """The previous plan scored on this problem as a candidate (None: it does not fit, or it
    leaves a model added since unplaced that the search places), and its score with the
    previous plan's admission bounds (on the same workload, its very simulation).

    Where the SLO was loosened, the previous plan competes with whichever admission scores
    higher: by the new SLO, or by its previous bound (`kept_admission`), which serves exactly
    the requests it served before, each within the looser SLO: so a looser SLO never
    lowers a re-plan, although SLO-aware admission can do worse with one."""
    reason = unfit_reason(problem, previous)
    if reason is not None:
        return None, IncumbentInfo(outcome="ignored", reason=reason), 0.0
    start = time.perf_counter()
    sims = problem.simulations
    placement = incumbent_placement(problem, previous)
    sim = problem.evaluator().run(placement)
    problem.simulations += 1
    bounds = kept_admission(problem, previous)
    admission: dict[str, float] = {}
    as_before = sim
    if bounds:
        as_before = problem.evaluator_with(bounds).run(placement)
        problem.simulations += 1
        # ties keep what the previous plan had (its groups, hence its planHash)
        if as_before.attainment > sim.attainment or (
            as_before.attainment == sim.attainment and bounds == previous.admission_seconds()
        ):
            sim, admission = as_before, bounds
    evaluated = Evaluated(
        searched.policy,
        PolicyResult(placement),
        sim,
        searched.seconds + time.perf_counter() - start,
        searched.simulations + problem.simulations - sims,
        admission,
    )
    searched_places = {m for g in searched.result.placement.groups for m in g.models}
    placed = {m for g in placement.groups for m in g.models}
    new = new_models(problem, previous)
    left = [m for m in new if m not in placed and m in searched_places]
    if left:
        reason = (
            f"it leaves {', '.join(map(repr, left))} (added since) unplaced; the search places it"
        )
        return (
            None,
            IncumbentInfo(outcome="replaced", attainment=evaluated.attainment, reason=reason),
            as_before.attainment,
        )
    added = [m for m in new if m in placed]
    notes = []
    if added:
        notes.append(f"with the models added since filled in: {', '.join(map(repr, added))}")
    if admission:
        notes.append(
            "admitting by its previous bound, below the new SLO, for "
            + ", ".join(f"{m!r} ({1000 * b:g} ms)" for m, b in admission.items())
        )
    reason = "; ".join(notes)
    info = IncumbentInfo(outcome="replaced", attainment=evaluated.attainment, reason=reason)
    return evaluated, info, as_before.attainment


def static_baselines(others: list[Evaluated]) -> list[Evaluated]:
    """The baselines whose placement is one plan (clockwork++ re-places every window: its
    attainment is its own, not a placement's)."""
    return [b for b in others if b.result.attainment is None]


def never_below(
    problem: SearchProblem,
    chosen: Evaluated,
    others: list[Evaluated],
    incumbent: Evaluated | None = None,
    margin: float = 0.0,
) -> Evaluated:
    """The best of the search (`chosen`), the incumbent and the static baselines computed in
    the same run, on the whole workload. Ties keep the incumbent (a re-plan does not roll pods
    for nothing), as does any gain of `margin` or less over it; then the search. When a
    baseline scores strictly higher than both, the local search continues from its placement."""
    bar = chosen.attainment
    if incumbent is not None and incumbent.attainment + margin >= chosen.attainment:
        chosen, bar = incumbent, incumbent.attainment + margin
    best = max(static_baselines(others), key=lambda b: b.attainment, default=None)
    if best is None or best.attainment <= bar:
        return chosen
    start = time.perf_counter()
    sims = problem.simulations
    placement, _ = improve(problem, best.result.placement, max_simulations=100)
    sim = problem.evaluator().run(placement)
    if sim.attainment < best.attainment:  # the search ran on a sample: keep the baseline's
        placement, sim = best.result.placement, best.sim
    notes = dict(chosen.result.notes) | {"continuedFrom": best.policy}
    return Evaluated(
        chosen.policy,
        PolicyResult(placement, notes=notes),
        sim,
        chosen.seconds + time.perf_counter() - start,
        chosen.simulations + problem.simulations - sims,
    )


def make_plan(
    ms: ModelSet,
    problem: SearchProblem,
    chosen: Evaluated,
    baselines: list[Evaluated],
    incumbent: IncumbentInfo | None = None,
) -> Plan:
    spec = ms.spec
    by_name = {m.name: m for m in spec.models}
    groups: list[PlanGroup] = []
    # A group without models is not emitted (the runtime refuses one); its GPUs are idle.
    used = [g for g in chosen.result.placement.groups if g.models]
    for i, g in enumerate(used):
        models = []
        measured = True
        for name in g.models:
            cp = problem.profiles[name].get(g.config.pp, g.config.tp)
            assert cp is not None
            measured = measured and cp.measured
            models.append(
                PlanModel(
                    name=name,
                    slo_seconds=problem.slo[name],
                    admission_seconds=chosen.admission.get(name),
                    max_batch_size=spec.max_batch_size_of(by_name[name]),
                    stage_latency_seconds={
                        int(b): [float(x) for x in cp.stage_latency[r]]
                        for r, b in enumerate(cp.batch_sizes)
                    },
                    weight_bytes_per_gpu=cp.weight_bytes_per_gpu,
                    weights=by_name[name].weights,
                    overheads=plan_overheads(problem.profiles[name].overheads),
                )
            )
        groups.append(
            PlanGroup(
                name=f"g{i}",
                gpus=g.config.gpus,
                pp=g.config.pp,
                tp=g.config.tp,
                memory_per_gpu_bytes=group_memory_per_gpu(g, problem.profiles),
                models=models,
                latency_source="measured" if measured else "estimated",
            )
        )
    sim = chosen.sim
    placed = {m for g in used for m in g.models}
    return Plan(
        model_set=ms.metadata.name,
        policy=chosen.policy,
        cluster=PlanCluster(
            gpus=spec.cluster.gpus,
            gpu_memory_bytes=spec.cluster.gpu_memory_bytes,
            gpus_per_node=spec.cluster.gpus_per_node,
        ),
        groups=groups,
        predicted=Predicted(
            attainment=chosen.attainment,
            goodput=float(sim.goodput),
            latency=LatencyPercentiles(**latency_percentiles(sim)),
            per_model={m: float(a) for m, a in sim.per_model_attainment.items()},
            requests=sim.n_requests,
            baselines={b.policy: b.attainment for b in baselines},
        ),
        search=SearchInfo(
            seconds=round(chosen.seconds, 4),
            simulations=chosen.simulations,
            placement=Placement(used).describe(),
            incumbent=incumbent,
        ),
        unplaced=[m.name for m in spec.models if m.name not in placed],
        idle_gpus=spec.cluster.gpus - sum(g.config.gpus for g in used),
        warnings=[
            *(problem.eval_workload or problem.workload).notes,
            *left_out_by_choice(
                problem, chosen, used, [m.name for m in spec.models if m.name not in placed]
            ),
        ],
    )


def left_out_by_choice(
    problem: SearchProblem, chosen: Evaluated, groups: list[Group], unplaced: list[str]
) -> list[str]:
    """A warning per unplaced model that memory does not keep out: it fits beside a group's
    models or alone on the idle GPUs, so more memory would not place it. Each such replica is
    simulated (unplaced models are rare), and the warning gives the best attainment one
    reaches against the plan's."""
    idle = problem.num_gpus - sum(g.config.gpus for g in groups)
    out = []
    for m in unplaced:
        tries: list[tuple[str, Placement]] = []
        for i, g in enumerate(groups):
            if problem.profiles[m].get(g.config.pp, g.config.tp) and problem.can_add(g, m):
                tries.append((f"beside the models of g{i}", _with_replica(groups, i, m)))
        alone = [
            c.config
            for c in problem.profiles[m].configs.values()
            if c.config.gpus <= idle and c.weight_bytes_per_gpu <= problem.budget
        ]
        if alone:
            config = min(alone, key=lambda c: (c.gpus, c.pp))
            tries.append(
                (f"alone on the idle GPUs ({config})", Placement([*groups, Group(config, [m])]))
            )
        if not tries:
            continue
        evaluator = problem.evaluator_with(chosen.admission)  # as the plan is scored
        scored = [(evaluator.run(p).attainment, where) for where, p in tries]
        problem.simulations += len(scored)
        best, where = max(scored, key=lambda t: t[0])
        if best < chosen.attainment:
            why = "its requests delay the others'"
        elif best == chosen.attainment:
            why = "no gain"
        else:
            why = "higher: the search missed it"
        out.append(
            f"{left_out_warning(m)} {where}: with one there the "
            f"predicted attainment is {100 * best:.2f} %, against {100 * chosen.attainment:.2f} "
            f"% without ({why}); more memory would not place it: add GPUs or drop it"
        )
    return out


def _with_replica(groups: list[Group], index: int, model: str) -> Placement:
    copy = [g.copy() for g in groups]
    copy[index].models.append(model)
    return Placement(copy)


def latency_percentiles(sim: SimResult) -> dict[str, float]:
    return {"p50": sim.latency_p50, "p90": sim.latency_p90, "p99": sim.latency_p99}


def evaluate_plan(spec: ModelSetSpec, plan: Plan) -> SimResult:
    problem = build_problem(spec)
    placement = plan.placement()
    for g in placement.groups:
        for m in g.models:
            if m not in problem.profiles:
                raise SpecError(f"the plan places model {m!r}, which the ModelSet does not define")
    return problem.evaluator_with(plan.admission_seconds()).run(placement)
