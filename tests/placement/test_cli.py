"""The `statmux` CLI end to end: plan, simulate, errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from statmux.placement.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from slo_admission_example import (  # noqa: E402  (tests/helpers, put on the path above)
    BOTH_ON_ONE_GPU,
    long_and_short_spec,
    write_trace,
)

DEMO = ROOT / "examples" / "demo.yaml"


def statmux(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statmux", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def small_modelset(tmp_path: Path, **spec_changes) -> Path:
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"]["durationSeconds"] = 120
    doc["spec"].update(spec_changes)
    path = tmp_path / "ms.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_writes_a_valid_plan_and_simulate_agrees(tmp_path):
    ms = small_modelset(tmp_path)
    plan_path = tmp_path / "plan.json"
    res = statmux("plan", str(ms), "-o", str(plan_path), "--no-baselines", "-q")
    assert res.returncode == 0, res.stderr
    assert "Plan for demo" in res.stdout and "Predicted SLO attainment" in res.stdout
    plan = json.loads(plan_path.read_text())
    assert plan["kind"] == "Plan" and plan["policy"] == "statmux"
    spec = yaml.safe_load(ms.read_text())["spec"]
    names = {m["name"] for m in spec["models"]}
    placed = {m["name"] for g in plan["groups"] for m in g["models"]}
    assert placed == names
    assert sum(g["gpus"] for g in plan["groups"]) <= spec["cluster"]["gpus"]
    for g in plan["groups"]:
        assert g["gpus"] == g["pp"] * g["tp"]
        assert g["memoryPerGpuBytes"] <= 13 * 2**30
        for m in g["models"]:
            assert all(len(v) == g["pp"] for v in m["stageLatencySeconds"].values())
    assert 0.0 <= plan["predicted"]["attainment"] <= 1.0

    sim = statmux("simulate", str(ms), "--plan", str(plan_path), "--json")
    assert sim.returncode == 0, sim.stderr
    summary = json.loads(sim.stdout)
    assert summary["attainment"] == pytest.approx(plan["predicted"]["attainment"])


def test_plan_prints_baselines(tmp_path):
    ms = small_modelset(tmp_path)
    res = statmux("plan", str(ms), "--json", "-q")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert set(plan["predicted"]["baselines"]) == {"sr", "clockwork++", "alpaserve"}


def test_manual_placement_is_used_verbatim(tmp_path):
    ms = small_modelset(
        tmp_path,
        placement={
            "policy": "manual",
            "groups": [
                {"pipelineStages": 4, "tensorParallel": 1, "models": ["bert-a", "bert-e"]},
                {"pipelineStages": 2, "tensorParallel": 2, "models": ["bert-b"]},
            ],
        },
    )
    res = statmux("plan", str(ms), "--json", "--no-baselines", "-q")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert [(g["pp"], g["tp"], [m["name"] for m in g["models"]]) for g in plan["groups"]] == [
        (4, 1, ["bert-a", "bert-e"]),
        (2, 2, ["bert-b"]),
    ]
    # models without a replica miss all their requests
    assert plan["predicted"]["perModel"]["bert-c"] == 0.0


def assert_user_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


def test_unknown_profile(tmp_path):
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["models"][0]["profile"] = {"builtin": "gpt-17"}
    p = tmp_path / "ms.yaml"
    p.write_text(yaml.safe_dump(doc))
    assert_user_error(statmux("plan", str(p), "-q"), "gpt-17", "bert-1.3b")


def test_model_that_fits_nowhere(tmp_path):
    ms = small_modelset(tmp_path, cluster={"gpus": 2, "gpuMemory": "512Mi"})
    assert_user_error(statmux("plan", str(ms), "-q"), "bert-a", "smallest per-GPU footprint")


def test_empty_workload(tmp_path):
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"] = {
        "durationSeconds": 60,
        "perModel": [{"model": m["name"], "rate": 0} for m in doc["spec"]["models"]],
    }
    p = tmp_path / "ms.yaml"
    p.write_text(yaml.safe_dump(doc))
    assert_user_error(statmux("plan", str(p), "-q"), "workload")


def test_malformed_trace(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time,model\n0.5,bert-a\nsoon,bert-b\n")
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"] = {"trace": {"path": "trace.csv", "format": "csv"}}
    p = tmp_path / "ms.yaml"
    p.write_text(yaml.safe_dump(doc))
    assert_user_error(statmux("plan", str(p), "-q"), "trace.csv:3", "soon")


def test_invalid_manifest_names_field(tmp_path):
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["placement"]["policy"] = "random"
    p = tmp_path / "ms.yaml"
    p.write_text(yaml.safe_dump(doc))
    assert_user_error(statmux("plan", str(p)), "spec.placement.policy", "clockwork++")


def test_missing_plan_file(tmp_path):
    assert_user_error(
        statmux("simulate", str(DEMO), "--plan", str(tmp_path / "nope.json")), "nope.json"
    )


def test_runs_from_any_directory(tmp_path):
    small_modelset(tmp_path)
    res = statmux("plan", "ms.yaml", "--no-baselines", "-q", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def test_simulate_given_a_modelset_as_the_plan_says_so():
    res = statmux("simulate", str(DEMO), "--plan", str(DEMO))
    assert_user_error(res, "demo.yaml: not a statmux Plan", "this is a ModelSet", "statmux plan")


def test_simulate_names_the_bad_plan_field(tmp_path):
    ms = small_modelset(
        tmp_path,
        placement={
            "policy": "manual",
            "groups": [{"pipelineStages": 1, "tensorParallel": 1, "models": ["bert-a"]}],
        },
    )
    res = statmux("plan", str(ms), "--json", "--no-baselines", "-q")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    plan["groups"][0]["pp"] = 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(plan))
    res = statmux("simulate", str(ms), "--plan", str(bad))
    assert_user_error(res, "bad.json: groups.0.pp: Input should be greater than or equal to 1")


def test_per_model_max_batch_size_reaches_the_plan():
    from statmux.placement.planner import plan_modelset
    from statmux.placement.spec import parse_modelset

    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"]["durationSeconds"] = 60
    doc["spec"]["maxBatchSize"] = 2
    doc["spec"]["models"][1]["maxBatchSize"] = 8
    doc["spec"]["placement"] = {
        "policy": "manual",
        "groups": [{"pipelineStages": 2, "tensorParallel": 1, "models": ["bert-a", "bert-b"]}],
    }
    plan = plan_modelset(parse_modelset(doc))
    (group,) = plan.groups
    assert {m.name: m.max_batch_size for m in group.models} == {"bert-a": 2, "bert-b": 8}


def test_unplaced_models_warn_and_strict_exits_2(tmp_path: Path) -> None:
    """At 2 GiB per GPU the 8 demo models (32 GB of weights) cannot all fit on 8 GPUs."""
    text = DEMO.read_text().replace("gpuMemory: 13Gi", "gpuMemory: 2Gi")
    text = text.replace("durationSeconds: 600", "durationSeconds: 60")
    spec = tmp_path / "tight.yaml"
    spec.write_text(text)
    out = tmp_path / "plan.json"
    r = statmux("plan", str(spec), "-q", "--no-baselines", "-o", str(out))
    assert r.returncode == 0, r.stderr
    plan = Plan.read(out)
    assert plan.unplaced and all(m in r.stderr for m in plan.unplaced)
    assert "warning" in r.stderr and "no replica" in r.stderr
    assert all(g.models for g in plan.groups)
    assert plan.idle_gpus == plan.cluster.gpus - sum(g.gpus for g in plan.groups)
    strict = statmux("plan", str(spec), "-q", "--no-baselines", "--strict")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert plan.unplaced[0] in strict.stderr


def test_trace_example_plans_no_empty_group_and_marks_latency_source(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    r = statmux("plan", str(ROOT / "examples" / "trace.yaml"), "-q", "-o", str(out))
    assert r.returncode == 0, r.stderr
    plan = Plan.read(out)
    assert plan.groups and all(g.models for g in plan.groups)
    assert not plan.unplaced
    # the built-in bert-2.6b profile is scaled from bert-1.3b: estimated
    assert {g.latency_source for g in plan.groups} <= {"measured", "estimated"}
    assert "estimated" in r.stdout or "measured" in r.stdout


def test_the_profiles_overheads_reach_the_plan() -> None:
    """The router and the groups admit with the overheads the simulator scored the plan with."""
    from statmux.placement.planner import plan_modelset
    from statmux.placement.spec import parse_modelset

    overheads = {"requestSeconds": 0.012, "stageSeconds": 0.004, "stageFraction": 0.01}
    inline = {
        "weightBytes": 1e9,
        "configs": [
            {"pipelineStages": 2, "tensorParallel": 1, "stageLatencyS": {"1": [0.05, 0.06]}}
        ],
    }
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"]["durationSeconds"] = 30
    doc["spec"]["models"] = [
        {"name": "a", "profile": {"inline": inline | {"overheads": overheads}}},
        {"name": "b", "profile": {"inline": inline}},
    ]
    doc["spec"]["workload"]["total"]["rate"] = 4
    doc["spec"]["placement"] = {
        "policy": "manual",
        "groups": [{"pipelineStages": 2, "tensorParallel": 1, "models": ["a", "b"]}],
    }
    plan = Plan.parse_json(plan_modelset(parse_modelset(doc)).to_json())  # through JSON
    a, b = plan.groups[0].models
    assert a.overheads is not None and b.overheads is None
    assert a.overheads.model_dump(by_alias=True) == overheads
    assert a.stage_latency(1) == [0.05, 0.06]  # the profile's, as emulation sleeps them
    assert a.served_stage_latency(1) == pytest.approx([0.05 * 1.02, 0.06 * 1.02 + 0.004])
    assert a.request_overhead_seconds == 0.012 and b.request_overhead_seconds == 0.0


def demo_on(tmp_path: Path, gpus: int, **search: object) -> Path:
    """The demo ModelSet (a 60 s workload) on `gpus` GPUs, with placement.search settings."""
    doc = yaml.safe_load(DEMO.read_text())
    doc["spec"]["workload"]["durationSeconds"] = 60
    doc["spec"]["cluster"]["gpus"] = gpus
    doc["spec"]["placement"].update(search)
    path = tmp_path / f"demo-{gpus}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_with_previous_keeps_or_beats_it_and_reports_it(tmp_path: Path) -> None:
    """`--previous PLAN.json`: the plan for 6 GPUs given to the plan for 8 (and back to 4,
    where it no longer fits: a warning naming the reason, not an error)."""
    six, eight, four = (demo_on(tmp_path, gpus) for gpus in (6, 8, 4))
    first = tmp_path / "six.json"
    assert statmux("plan", str(six), "-q", "-o", str(first)).returncode == 0
    previous = Plan.read(first)
    res = statmux("plan", str(eight), "-q", "--previous", str(first))
    assert res.returncode == 0, res.stderr
    assert any(f"previous plan {o}" in res.stdout for o in ("kept", "improved", "replaced"))
    res = statmux("plan", str(eight), "-q", "--json", "--previous", str(first))
    plan = Plan.parse_json(res.stdout)
    assert plan.search.incumbent is not None
    assert plan.search.incumbent.attainment == previous.attainment
    assert plan.attainment >= previous.attainment
    res = statmux("plan", str(four), "-q", "--no-baselines", "--previous", str(first))
    assert res.returncode == 0, res.stderr
    used = sum(g.gpus for g in previous.groups)
    assert f"--previous ignored: it uses {used} GPUs, the cluster has 4" in res.stderr


def test_plan_with_previous_says_when_a_gain_is_too_small_to_replace_it(tmp_path: Path) -> None:
    """placement.search.minGainToReplace: the plan for 4 GPUs stays on 8 when nothing can
    gain 100 points, and `statmux plan` says by how much the new plan scored higher."""
    four = demo_on(tmp_path, 4)
    eight = demo_on(tmp_path, 8, search={"minGainToReplace": 100})
    first = tmp_path / "four.json"
    assert statmux("plan", str(four), "-q", "-o", str(first)).returncode == 0
    out = tmp_path / "eight.json"
    res = statmux("plan", str(eight), "--no-baselines", "--previous", str(first), "-o", str(out))
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())  # rich wraps long lines
    assert "previous plan kept: it scores" in text, text
    assert "points higher, not more than placement.search.minGainToReplace (100)" in text
    assert Plan.read(out).groups == Plan.read(first).groups


def test_plan_names_the_bad_previous_plan_field(tmp_path: Path) -> None:
    ms = small_modelset(tmp_path)
    res = statmux("plan", str(ms), "--json", "--no-baselines", "-q")
    plan = json.loads(res.stdout)
    good = tmp_path / "good.json"
    good.write_text(res.stdout)
    plan["groups"][0]["tp"] = 0
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(plan))
    res = statmux("plan", str(ms), "--previous", str(bad))
    assert_user_error(res, "--previous: ", "bad.json: groups.0.tp: Input should be greater")
    assert_user_error(
        statmux("plan", str(ms), "--previous", str(tmp_path / "nope.json")), "nope.json"
    )
    res = statmux("plan", str(ms), "--previous", str(good), "--target-attainment", "0.9")
    assert_user_error(res, "--previous and --target-attainment")


def long_and_short(tmp_path: Path, slo_scale: float, manual: bool = False) -> Path:
    """tests/helpers/slo_admission_example.py as a ModelSet file (4 of 5 requests served at
    SLO 1x, 3 of 5 at 2x)."""
    write_trace(tmp_path)
    placement = BOTH_ON_ONE_GPU if manual else {"policy": "statmux"}
    doc = {
        "apiVersion": "statmux.io/v1alpha1",
        "kind": "ModelSet",
        "metadata": {"name": "long-and-short"},
        "spec": long_and_short_spec(slo_scale, "trace.csv", placement),
    }
    path = tmp_path / f"slo-{slo_scale:g}{'-manual' if manual else ''}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_looser_slo_never_lowers_a_replan_it_keeps_the_previous_admission_bound(
    tmp_path: Path,
) -> None:
    """Loosening the SLO 2x would admit the long request and lose two short ones; the re-plan
    keeps the previous plan admitting by its old bound (admissionSeconds), so it serves the
    same 4 of 5, each within the looser SLO, and `statmux simulate` of that Plan agrees."""
    before = tmp_path / "before.json"
    res = statmux("plan", str(long_and_short(tmp_path, 1.0, manual=True)), "-q", "-o", str(before))
    assert res.returncode == 0, res.stderr
    assert Plan.read(before).attainment == 0.8
    looser = long_and_short(tmp_path, 2.0)
    after = tmp_path / "after.json"
    res = statmux(
        "plan", str(looser), "--no-baselines", "--previous", str(before), "-o", str(after)
    )
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert "admitting by its previous bound, below the new SLO, for 'long' (3000 ms)" in text
    plan = Plan.read(after)
    assert plan.attainment == 0.8
    models = {m.name: m for g in plan.groups for m in g.models}
    assert {n: (m.slo_seconds, m.admission_seconds) for n, m in models.items()} == {
        "long": (6.0, 3.0),
        "short": (2.0, 1.0),
    }
    res = statmux("simulate", str(looser), "--plan", str(after), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["attainment"] == 0.8
    # the same Plan without its admission bounds: what the looser SLO alone would give
    doc = json.loads(after.read_text())
    for group in doc["groups"]:
        for m in group["models"]:
            del m["admissionSeconds"]
    del doc["planHash"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(doc))
    res = statmux("simulate", str(looser), "--plan", str(bare), "--json")
    assert json.loads(res.stdout)["attainment"] == 0.6


def test_a_model_left_out_although_it_fits_is_a_warning_that_says_why(tmp_path: Path) -> None:
    """At 2x the plan leaves the long model out (admitted, it makes two short requests miss;
    the search places it, and the baseline guard continues from sr's plan without it): the
    warning says it fits, what a replica would score, and that memory is not the cause."""
    res = statmux("plan", str(long_and_short(tmp_path, 2.0)), "-q", "--json")
    assert res.returncode == 0, res.stderr
    plan = Plan.parse_json(res.stdout)
    assert plan.unplaced == ["long"] and plan.attainment == 0.8
    assert plan.warnings == [
        "model 'long' gets no replica although it fits beside the models of g0: with one there "
        "the predicted attainment is 60.00 %, against 80.00 % without (its requests delay the "
        "others'); more memory would not place it: add GPUs or drop it"
    ]
    # the summary line's advice agrees: not "raise cluster.gpuMemory" for it
    assert plan.unplaced_advice() == (
        "add GPUs for long (they fit: memory is not what keeps them out, see the warnings), "
        "or drop models"
    )
    assert plan.unplaced_advice() in " ".join(res.stderr.split())


def test_sweep_gpus_never_decreases_and_plots_the_curve(tmp_path: Path) -> None:
    """`--sweep-gpus 3:8`: each count re-planned from the smaller count's plan; the JSON rows,
    the PNG, the last count's plan with -o, and each count at least its baselines."""
    ms = demo_on(tmp_path, 8)
    png, last = tmp_path / "sweep.png", tmp_path / "last.json"
    res = statmux(
        "plan", str(ms), "-q", "--sweep-gpus", "3:8", "--json", "--plot", str(png), "-o", str(last)
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["gpus"] for r in rows] == [3, 4, 5, 6, 7, 8]
    scores = [r["attainment"] for r in rows]
    assert scores == sorted(scores), scores
    assert rows[0]["previousPlan"] is None
    assert all(r["previousPlan"] in ("kept", "improved", "replaced") for r in rows[1:])
    for r in rows:
        assert set(r["baselines"]) == {"sr", "clockwork++", "alpaserve"}
        assert r["attainment"] >= max(r["baselines"][b] for b in ("sr", "alpaserve"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plan = Plan.read(last)
    assert plan.cluster.gpus == 8 and plan.attainment == scores[-1]
    res = statmux("plan", str(ms), "-q", "--sweep-gpus", "5:6", "--no-baselines")
    assert res.returncode == 0, res.stderr
    assert "GPU sweep of demo" in res.stdout and "5 " in res.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--sweep-gpus", "8"], "--sweep-gpus: '8' is not FIRST:LAST or FIRST:LAST:STEP"),
        (["--sweep-gpus", "a:b"], "is not FIRST:LAST"),
        (["--sweep-gpus", "8:4"], "needs 1 <= FIRST <= LAST and STEP >= 1 (got FIRST 8, LAST 4"),
        (["--sweep-gpus", "1:4:0"], "STEP 0"),
        (["--sweep-gpus", "1:1000"], "plans 1000 counts; at most 256"),
        (["--sweep-gpus", "2:4", "--target-attainment", "0.9"], "drop --previous and --target"),
        (["--sweep-gpus", "2:4", "--policy", "sr"], "--sweep-gpus plans with the statmux policy"),
        (["--plot", "x.png"], "--plot goes with --sweep-gpus"),
        (["-o", "/no-such-dir-statmux/p.json"], "-o /no-such-dir-statmux/p.json: the folder"),
        (["--sweep-gpus", "3:4", "--plot", "/no-such-dir-statmux/c.png"], "--plot /no-such-dir"),
    ],
)
def test_sweep_gpus_mistakes_are_named(tmp_path: Path, args: list[str], needle: str) -> None:
    assert_user_error(statmux("plan", str(DEMO), "-q", *args), needle)


def test_sweep_gpus_of_a_manual_modelset_asks_for_the_statmux_policy(tmp_path: Path) -> None:
    """examples/manual.yaml places its own groups on 8 GPUs: a sweep needs --policy statmux,
    and then ignores those groups at every count (no error that they need 8 GPUs)."""
    manual = ROOT / "examples" / "manual.yaml"
    res = statmux("plan", str(manual), "-q", "--sweep-gpus", "2:3")
    assert_user_error(res, "this ModelSet asks for 'manual' (spec.placement.policy)")
    res = statmux(
        "plan",
        str(manual),
        "-q",
        "--sweep-gpus",
        "2:3",
        "--json",
        "--no-baselines",
        "--policy",
        "statmux",
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [r["gpus"] for r in rows] == [2, 3] and rows[0]["attainment"] <= rows[1]["attainment"]


def test_target_attainment_prints_the_fewest_gpus_and_their_plan_with_the_baselines(
    tmp_path: Path,
) -> None:
    """The capacity answer agrees with the sweep: the count it names reaches the target, the
    one below does not, and its plan carries the baselines computed at that count."""
    ms = demo_on(tmp_path, 8)
    out = tmp_path / "fewest.json"
    res = statmux("plan", str(ms), "-q", "--target-attainment", "0.99", "-o", str(out))
    assert res.returncode == 0, res.stderr
    plan = Plan.read(out)
    gpus = plan.cluster.gpus
    assert f"fewest GPUs reaching 99.00 % SLO attainment: {gpus}" in res.stdout
    assert plan.attainment >= 0.99 and plan.search.incumbent is None
    assert set(plan.predicted.baselines) == {"sr", "clockwork++", "alpaserve"}
    sweep = statmux("plan", str(ms), "-q", "--sweep-gpus", f"{gpus - 1}:{gpus}", "--json")
    rows = json.loads(sweep.stdout)
    assert rows[0]["attainment"] < 0.99 <= rows[1]["attainment"]
