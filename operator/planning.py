"""The operator's one call into the placement engine."""

from __future__ import annotations

from statmux.placement.plan import Plan
from statmux.placement.spec import API_VERSION, KIND, ModelSet, ModelSetSpec


def plan_for(name: str, namespace: str, spec: ModelSetSpec) -> Plan:
    """Plan a validated spec (raises SpecError for user mistakes).

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
    return plan_modelset(ms)
