"""The operator's one call into the placement engine."""

from __future__ import annotations

from statmux.placement.plan import Plan
from statmux.placement.spec import API_VERSION, KIND, ModelSet, ModelSetSpec


def plan_for(name: str, namespace: str, spec: ModelSetSpec, previous: Plan | None = None) -> Plan:
    """Plan a validated spec (raises SpecError for user mistakes).

    `previous`: the plan the ModelSet runs now. It competes with the search and stays unless
    a candidate scores higher, so raising the GPU budget or memory, or loosening the SLO,
    never lowers the deployed plan's predicted attainment (and an unchanged answer does not
    roll pods); one that no longer fits is ignored (the planner logs why).

    CPU-bound (simulator-guided search): kopf runs the sync handlers that call this in its
    thread pool, so the event loop keeps serving watches and the liveness probe.
    """
    # Imported here: the planner pulls in numba kernels the rest of the operator never needs.
    from statmux.placement.planner import plan_modelset

    ms = ModelSet.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )
    return plan_modelset(ms, previous=previous)
