"""`statmux bench simulator`: how many requests per second the simulator gets through.

Workload: one hour of Gamma arrivals (CV 4), SLO 5x the single-GPU latency, bert-1.3b-like
synthetic profiles (statmux.placement.synthetic_profiles). Each case reports the best of a
few timed calls of Simulator.attainment (the search's path), single-threaded, after the
first call (JIT compile or numba cache load), which is reported separately.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numba

from statmux.placement.plan import Group, Placement
from statmux.placement.profile import ParallelConfig
from statmux.placement.sim_kernels import run_unbatched
from statmux.placement.simulator import Simulator
from statmux.placement.synthetic_profiles import bert_like_profile
from statmux.placement.workload import gamma_workload, split_rates

LATENCY = 0.099  # bert-1.3b, V100, batch 1 (shared/reference)


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _groups(n: int, pp: int, models: list[str], tp: int = 1) -> list[Group]:
    return [Group(ParallelConfig(pp, tp), list(models)) for _ in range(n)]


def _case(
    name: str, sim: Simulator, placement: Placement, repeats: int = 5
) -> dict[str, float | int | str]:
    first = _best_of(lambda: sim.attainment(placement), 1)
    seconds = _best_of(lambda: sim.attainment(placement), repeats)
    return {
        "case": name,
        "placement": placement.describe(),
        "requests": len(sim),
        "maxBatchSize": sim.max_batch_size,
        "attainment": round(sim.attainment(placement), 4),
        "seconds": seconds,
        "requestsPerSecond": len(sim) / seconds,
        "firstCallSeconds": first,
    }


def _compile_seconds() -> float:
    """A true compile of the non-batching kernel (a fresh dispatcher bypasses the cache)."""
    w = gamma_workload(["a"], [10.0], 1.0, 10.0)
    prof = {"a": bert_like_profile("a", LATENCY)}
    sim = Simulator(prof, w, {"a": 1.0})
    fresh = numba.njit(nogil=True)(run_unbatched.py_func)
    p = sim._prepare(Placement(_groups(1, 1, ["a"])))
    t = time.perf_counter()
    fresh(
        sim._arrivals, sim._model_ids, sim._deadlines, p.host_ptr, p.host_groups, p.npp, p.lat,
        1, False, sim._arrivals[:0],
    )  # fmt: skip
    return time.perf_counter() - t


def bench_simulator(as_json: bool = False) -> dict[str, object]:
    names8 = [f"bert-{i}" for i in range(8)]
    profiles8 = {n: bert_like_profile(n, LATENCY) for n in names8}
    slo8 = {n: 5 * LATENCY for n in names8}
    work8 = gamma_workload(names8, split_rates(100.0, 8), 4.0, 3600.0, seed=0)
    sim8 = Simulator(profiles8, work8, slo8)
    single = Placement([Group(ParallelConfig(1, 1), [n]) for n in names8])
    cases = [
        _case("8 models, 8 x 1 GPU", sim8, single),
        _case("8 models, 4 x pp2 (all on all)", sim8, Placement(_groups(4, 2, names8))),
        _case("8 models, 2 x pp4 (all on all)", sim8, Placement(_groups(2, 4, names8))),
        _case("8 models, 2 x pp2tp2 (all on all)", sim8, Placement(_groups(2, 2, names8, tp=2))),
    ]  # fmt: skip
    batched = Simulator(profiles8, work8, slo8, max_batch_size=8)
    cases.append(
        _case("8 models, 2 x pp4, batching 8", batched, Placement(_groups(2, 4, names8)), 3)
    )
    names48 = [f"m-{i}" for i in range(48)]
    profiles48 = {n: bert_like_profile(n, LATENCY) for n in names48}
    work48 = gamma_workload(names48, split_rates(400.0, 48, "powerLaw", 0.5), 4.0, 3600.0, 1)
    sim48 = Simulator(profiles48, work48, {n: 5 * LATENCY for n in names48})
    # 16 groups of pp4; each model on 4 of them (12 models per group).
    big = Placement(
        [Group(ParallelConfig(4, 1), names48[(g % 4) * 12 : (g % 4) * 12 + 12]) for g in range(16)]
    )
    cases.append(_case("48 models, 16 x pp4 (64 GPUs)", sim48, big, 3))
    result: dict[str, object] = {
        "cases": cases,
        "compileSeconds": _compile_seconds(),
        "threads": 1,
        "numba": numba.__version__,
    }
    if as_json:  # the caller (`statmux bench --json`) prints the object
        return result
    else:
        print(f"{'case':<36} {'requests':>9} {'attain':>7} {'M req/s':>8} {'first call':>10}")
        for c in cases:
            print(
                f"{c['case']:<36} {c['requests']:>9} {c['attainment']:>7.3f} "
                f"{float(c['requestsPerSecond']) / 1e6:>8.2f} {float(c['firstCallSeconds']):>9.3f}s"
            )
        print(f"JIT compile of the non-batching kernel: {result['compileSeconds']:.2f} s")
    return result


if __name__ == "__main__":
    bench_simulator()
