"""A previous plan as a candidate of a re-plan (the incumbent).

Given the plan a ModelSet runs now, the planner scores it on the new problem with the same
simulator and keeps it unless a candidate scores strictly higher (planner.never_below). With
the same workload, more GPUs, more memory per GPU or a looser SLO leave the incumbent valid,
so the re-plan's attainment is at least the incumbent's on the new problem: a chain of
re-plans is monotone in GPUs, memory and SLO by construction (the incumbent's simulation is
the very same one; with a looser SLO, when it admits by its previous bound:
`kept_admission`), whatever the search does. This module decides whether the previous plan
still fits, and builds the placement that competes. When the cluster grew or the workload
changed, a bounded local search from it (`improved_incumbent`) may use the new GPUs or memory,
or move replicas for the new rates and SLOs: it starts from the incumbent, so it never scores
below it.
"""

from __future__ import annotations

from statmux.placement.greedy import greedy_select
from statmux.placement.local_search import improve
from statmux.placement.packing import pack
from statmux.placement.plan import Group, Placement, Plan, group_memory_per_gpu
from statmux.placement.profile import ParallelConfig
from statmux.placement.search_space import SearchProblem


def unfit_reason(problem: SearchProblem, previous: Plan) -> str | None:
    """Why the previous plan's groups cannot run on this problem; None when they can."""
    used = sum(g.gpus for g in previous.groups)
    if used > problem.num_gpus:
        return f"it uses {used} GPUs, the cluster has {problem.num_gpus} (cluster.gpus)"
    gone = [m for m in previous.models if m not in problem.profiles]
    if gone:
        return f"it places {', '.join(map(repr, gone))}, no longer a model of the ModelSet"
    per_node = problem.gpus_per_node
    budget = problem.budget
    for g in previous.groups:
        # the search's rule: a group larger than a node takes whole nodes
        if g.gpus > per_node and g.gpus % per_node:
            return (
                f"group {g.name} spans {g.gpus} GPUs, not whole nodes of {per_node} "
                "(cluster.gpusPerNode)"
            )
        for m in g.models:
            if problem.profiles[m.name].get(g.pp, g.tp) is None:
                return f"group {g.name}: model {m.name!r} has no profile for {g.config}"
        need = group_memory_per_gpu(Group(g.config, [m.name for m in g.models]), problem.profiles)
        if need > budget:
            return (
                f"group {g.name} needs {need / 2**30:.2f} GiB per GPU, over cluster.gpuMemory "
                f"({budget / 2**30:.2f} GiB)"
            )
    return None


def new_models(problem: SearchProblem, previous: Plan) -> list[str]:
    """Models of the ModelSet that the previous plan's ModelSet did not have (neither placed
    nor listed as unplaced)."""
    known = {*previous.models, *previous.unplaced}
    return [m for m in problem.models if m not in known]


def incumbent_placement(problem: SearchProblem, previous: Plan) -> Placement:
    """The previous plan's groups, in its order (so that unchanged groups keep their names
    and pods). Models added to the ModelSet since are filled in: the simulator-scored greedy
    adds their replicas while they gain, then every one still without a replica gets one
    where memory allows (attainment decides against the search, the others' groups
    unchanged where possible). Idle GPUs host new models as one-GPU groups first (an
    empty group is the least loaded), so existing groups change only when those are full."""
    kept = previous.placement()
    new = new_models(problem, previous)
    if not new:
        return kept
    idle = [Group(ParallelConfig(1, 1)) for _ in range(problem.num_gpus - kept.gpus)]
    filled = greedy_select(problem, [*kept.groups, *idle], new)
    filled = pack(problem, filled.groups, new, fill=False)
    return Placement([g for g in filled.groups if g.models])


# The local search's budget from the incumbent, in simulations of the search workload: a
# tenth of the search's own count, within [8, 40] (about one replica added per two
# simulations: the add move comes first). Each costs a whole-workload simulation while many
# of the search's are of a component, so the CPU share is measured (docs/placement.md,
# "Monotone in resources").
IMPROVE_SHARE, IMPROVE_MIN, IMPROVE_MAX = 0.1, 8, 40


def improve_budget(search_simulations: int) -> int:
    """Simulations the local search from the incumbent may use, given the search's count."""
    return min(IMPROVE_MAX, max(IMPROVE_MIN, int(IMPROVE_SHARE * search_simulations)))


def grew(problem: SearchProblem, previous: Plan) -> bool:
    """Whether this problem has more GPUs or more memory per GPU than the previous plan's
    cluster: room the incumbent may not use."""
    cluster = previous.cluster
    return problem.num_gpus > cluster.gpus or problem.budget > cluster.gpu_memory_bytes


def kept_admission(problem: SearchProblem, previous: Plan) -> dict[str, float]:
    """The previous plan's admission bounds (admissionSeconds, else its SLO) that are below
    this problem's SLO: with them the incumbent serves exactly the requests it served
    before (same workload), each within the looser SLO."""
    bounds: dict[str, float] = {}
    for g in previous.groups:
        for m in g.models:  # a model's replicas share one bound; the tightest, to be safe
            b = m.admission_deadline_seconds
            bounds[m.name] = min(b, bounds.get(m.name, b))
    return {m: b for m, b in bounds.items() if m in problem.slo and b < problem.slo[m]}


def slo_changed(problem: SearchProblem, previous: Plan) -> bool:
    """Whether some model placed by the previous plan has another SLO now."""
    return any(
        m.name in problem.slo and m.slo_seconds != problem.slo[m.name]
        for g in previous.groups
        for m in g.models
    )


def worth_improving(problem: SearchProblem, previous: Plan, score: float) -> bool:
    """Whether the local search from the incumbent may find something: the cluster grew, an
    SLO changed, or the rates or models changed, which shows as the incumbent scoring other
    than its Plan predicted (`score`: its attainment on this problem with its previous
    admission bounds; on the same workload the simulation is the very same, to the last
    bit). An unchanged re-plan never runs it, so it keeps its groups and planHash."""
    return (
        grew(problem, previous)
        or slo_changed(problem, previous)
        or score != previous.predicted.attainment
    )


def improved_incumbent(
    problem: SearchProblem, placement: Placement, max_simulations: int = IMPROVE_MAX
) -> Placement:
    """The local search (local_search.improve, the search's own refinement) from the
    incumbent with the idle GPUs as empty one-GPU groups: its add move gives them replicas
    first (an empty group is the least loaded), and more memory lets it add replicas to the
    incumbent's groups. The incumbent's groups come first and in order, so the groups the
    search leaves alone keep their names. Empty groups are dropped."""
    # each replica added costs a simulation: more empty groups than the budget stay empty
    free = min(problem.num_gpus - placement.gpus, max_simulations)
    idle = [Group(ParallelConfig(1, 1)) for _ in range(free)]
    start = Placement([*(g.copy() for g in placement.groups), *idle])
    found, _ = improve(problem, start, max_simulations=max_simulations)
    return Placement([g for g in found.groups if g.models])
