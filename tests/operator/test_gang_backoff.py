"""The back-off between gang restarts of one group, against the in-memory API with an
injected clock: immediate first restart, doubling to a cap, reset after a stable ready
period, state kept on the StatefulSet (operator restarts, repeated events, crashes), and
the Degraded condition while a restart waits."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statmux.contract import (
    ANNOTATION_GANG_FAILED_AT,
    ANNOTATION_GANG_PENDING,
    ANNOTATION_GANG_READY_SINCE,
    ANNOTATION_GANG_RESTARTS,
    ANNOTATION_LAST_FAILURE,
)
from statmux.operator import gang
from statmux.operator import reconcile as rc
from statmux.operator.config import ConfigError, OperatorConfig
from statmux.operator.resources import Owner

# 10 s doubling, capped at 40 s: the cap is reached within a few restarts.
CFG = OperatorConfig(
    runtime_image="rt:1",
    router_image="router:1",
    gang_restart_backoff_seconds=10,
    gang_restart_backoff_max_seconds=40,
    gang_restart_stable_seconds=600,
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CRASHED = {
    "name": "runtime",
    "restartCount": 1,
    "state": {"running": {}},
    "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "no weights"}},
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Group:
    """One ModelSet with one two-pod StatefulSet group, driven through the reconciler."""

    def __init__(self, api: Any, owner: Owner, helpers: Any, cfg: OperatorConfig = CFG) -> None:
        self.api, self.owner, self.cfg = api, owner, cfg
        self.spec = helpers.manual_spec([(4, 4, ["a"])])
        result = rc.reconcile(
            api, cfg, owner, 1, self.spec, None, planner=helpers.table_planner, now=T0
        )
        self.status = result.status
        (self.name,) = api.by_kind("StatefulSet")
        self.group = self.status["groups"][0]["name"]
        self.pods = api.add_pods(self.name)
        assert len(self.pods) == 2

    @property
    def sts(self) -> dict:
        return self.api.objects[("StatefulSet", "ns", self.name)]

    @property
    def epoch(self) -> int:
        return gang.gang_epoch(self.sts)

    @property
    def annotations(self) -> dict:
        return self.sts["metadata"].get("annotations") or {}

    @property
    def restarts(self) -> int:
        return int(self.annotations.get(ANNOTATION_GANG_RESTARTS, 0))

    def crash(self, now: datetime, index: int = 1) -> list[str]:
        """A container of a current pod exits and kubelet restarts it: the pod event."""
        self.pods = self.api.add_pods(self.name) or self.pods
        name = f"{self.name}-{index}"
        pod = self.api.objects[("Pod", "ns", name)]
        pod["status"] = {"phase": "Running", "containerStatuses": [dict(CRASHED)]}
        return gang.handle_pod_event(self.api, "MODIFIED", copy.deepcopy(pod), self.cfg, now)

    def resync(self, now: datetime) -> rc.Result:
        result = rc.resync(self.api, self.cfg, self.owner, 1, self.spec, self.status, now=now)
        assert result is not None
        self.status = result.status
        return result

    def degraded(self) -> dict:
        return next(c for c in self.status["conditions"] if c["type"] == "Degraded")


@pytest.fixture
def group(api: Any, owner: Owner, helpers: Any) -> Group:
    return Group(api, owner, helpers)


# --------------------------------------------------------------------------- settings
def test_delays_double_from_the_base_to_the_cap() -> None:
    assert [CFG.gang_restart_delay(n) for n in range(6)] == [0, 10, 20, 40, 40, 40]
    default = OperatorConfig()
    assert [default.gang_restart_delay(n) for n in range(9)] == [
        0,
        10,
        20,
        40,
        80,
        160,
        300,
        300,
        300,
    ]
    assert default.gang_restart_delay(10_000) == 300  # a long streak stays a number
    assert OperatorConfig(gang_restart_backoff_seconds=0).gang_restart_delay(5) == 0


def test_backoff_settings_from_env() -> None:
    cfg = OperatorConfig.from_env(
        {
            "STATMUX_GANG_RESTART_BACKOFF_SECONDS": "5",
            "STATMUX_GANG_RESTART_BACKOFF_MAX_SECONDS": "60",
            "STATMUX_GANG_RESTART_STABLE_SECONDS": "120",
        }
    )
    assert (
        cfg.gang_restart_backoff_seconds,
        cfg.gang_restart_backoff_max_seconds,
        cfg.gang_restart_stable_seconds,
    ) == (5, 60, 120)
    with pytest.raises(ConfigError, match="STATMUX_GANG_RESTART_BACKOFF_SECONDS"):
        OperatorConfig.from_env({"STATMUX_GANG_RESTART_BACKOFF_SECONDS": "-1"})
    with pytest.raises(ConfigError, match=r"STATMUX_GANG_RESTART_STABLE_SECONDS.*number"):
        OperatorConfig.from_env({"STATMUX_GANG_RESTART_STABLE_SECONDS": "long"})
    with pytest.raises(ConfigError) as err:
        OperatorConfig.from_env({"STATMUX_GANG_RESTART_BACKOFF_MAX_SECONDS": "5"})
    assert "STATMUX_GANG_RESTART_BACKOFF_MAX_SECONDS=5" in str(err.value)
    assert "STATMUX_GANG_RESTART_BACKOFF_SECONDS=10" in str(err.value)


# --------------------------------------------------------------------------- back-off
def test_first_restart_is_immediate(group: Group) -> None:
    deleted = group.crash(at(0))
    assert sorted(deleted) == sorted(p["metadata"]["name"] for p in group.pods)
    assert group.epoch == 1 and group.restarts == 1
    assert ANNOTATION_GANG_PENDING not in group.annotations


def test_second_restart_waits_the_base_delay_then_the_timer_restarts(group: Group) -> None:
    group.crash(at(0))
    group.api.add_pods(group.name)
    assert group.crash(at(100)) == []  # waits: nothing deleted, same epoch
    assert group.epoch == 1
    assert group.annotations[ANNOTATION_GANG_FAILED_AT] == "2026-01-01T00:01:40Z"
    assert "exit 2: Error" in group.annotations[ANNOTATION_GANG_PENDING]
    assert len(group.api.by_kind("Pod")) == 2  # the failed pod is left to kubelet
    # no pod event comes; the resync timer before and at the due time (100 s + 10 s)
    assert group.resync(at(109)).gang_restarts == []
    assert group.epoch == 1
    result = group.resync(at(110))
    assert result.gang_restarts == [group.name]
    assert group.epoch == 2 and group.restarts == 2
    assert not group.api.by_kind("Pod")
    assert ANNOTATION_GANG_PENDING not in group.annotations
    assert ANNOTATION_GANG_FAILED_AT not in group.annotations
    # the restart's reason is kept as before, with the epoch
    assert group.resync(at(111)).status["groups"][0]["ready"] is False
    assert "restarting after pod " in group.degraded()["message"]
    assert "(gang restart 2; 2 in a row)" in group.degraded()["message"]


def test_delays_double_up_to_the_cap(group: Group) -> None:
    t = 0.0
    for n, delay in enumerate([0, 10, 20, 40, 40, 40]):  # n: restarts in a row so far
        assert CFG.gang_restart_delay(n) == delay
        before = group.epoch
        deleted = group.crash(at(t))
        if delay:
            assert deleted == [] and group.epoch == before
            # a pod event before the due time does not restart either
            assert group.crash(at(t + delay - 1)) == []
            assert group.resync(at(t + delay - 1)).gang_restarts == []
            # at the due time the next pod event restarts (odd n) or the timer does (even n)
            if n % 2:
                assert group.crash(at(t + delay)) != []
            else:
                assert group.resync(at(t + delay)).gang_restarts == [group.name]
        else:
            assert deleted != []
        assert group.epoch == before + 1 and group.restarts == n + 1
        t += delay + 30  # the new pods run 30 s, then crash again


def test_the_count_resets_after_the_group_stayed_ready(group: Group) -> None:
    group.crash(at(0))
    group.crash(at(10))
    group.resync(at(20))  # restart 2
    assert group.restarts == 2
    group.api.add_pods(group.name)
    group.api.mark_ready("StatefulSet")
    group.resync(at(30))
    assert group.annotations[ANNOTATION_GANG_READY_SINCE] == "2026-01-01T00:00:30Z"
    group.resync(at(30 + 599))
    assert group.restarts == 2  # not yet stable
    group.resync(at(30 + 600))
    assert group.restarts == 0
    assert ANNOTATION_GANG_READY_SINCE not in group.annotations
    patches: list[tuple] = []
    merge_patch = group.api.merge_patch
    group.api.merge_patch = lambda *a: patches.append(a) or merge_patch(*a)
    group.resync(at(2000))
    assert patches == []  # a healthy group with no streak costs no gang write
    group.api.merge_patch = merge_patch
    # a transient fault after a long healthy run heals at once again
    assert group.crash(at(2000)) != []
    assert group.restarts == 1
    # the last failure counts both: all restarts (the epoch) and those in a row (the back-off)
    assert "(gang restart 3; 1 in a row)" in group.annotations[ANNOTATION_LAST_FAILURE]


def test_not_ready_in_between_starts_the_stable_period_again(group: Group) -> None:
    group.crash(at(0))
    group.api.add_pods(group.name)
    group.api.mark_ready("StatefulSet")
    group.resync(at(10))
    assert group.annotations[ANNOTATION_GANG_READY_SINCE] == "2026-01-01T00:00:10Z"
    group.sts["status"]["readyReplicas"] = 1  # a pod's readiness probe fails for a while
    group.resync(at(300))
    assert ANNOTATION_GANG_READY_SINCE not in group.annotations
    group.api.mark_ready("StatefulSet")
    group.resync(at(400))
    group.resync(at(900))  # ready for 500 s only
    assert group.restarts == 1
    assert group.crash(at(901)) == []  # so the next restart still backs off
    assert ANNOTATION_GANG_READY_SINCE not in group.annotations


def test_a_failure_is_not_forgotten_by_an_operator_restart(
    group: Group, owner: Owner, helpers: Any
) -> None:
    group.crash(at(0))
    group.crash(at(50))  # waits until 60 s
    # A new operator process: nothing but what the API server holds.
    fresh = helpers.FakeApi()
    fresh.objects = copy.deepcopy(group.api.objects)
    group.api = fresh
    # kopf lists the pods again on start (event type None): the failure is still pending,
    # neither restarted early nor postponed
    failed = copy.deepcopy(fresh.objects[("Pod", "ns", f"{group.name}-1")])
    assert gang.handle_pod_event(fresh, "None", failed, CFG, at(55)) == []
    assert group.annotations[ANNOTATION_GANG_FAILED_AT] == "2026-01-01T00:00:50Z"
    assert group.resync(at(59)).gang_restarts == []
    assert group.resync(at(60)).gang_restarts == [group.name]
    assert group.epoch == 2 and group.restarts == 2
    # the count carried over: the next failure waits 20 s
    group.api.add_pods(group.name)
    assert group.crash(at(100)) == []
    fresh2 = helpers.FakeApi()
    fresh2.objects = copy.deepcopy(group.api.objects)
    group.api = fresh2
    assert group.resync(at(119)).gang_restarts == []
    assert group.resync(at(120)).gang_restarts == [group.name]
    assert group.epoch == 3 and group.restarts == 3


def test_repeated_events_restart_once_and_do_not_move_the_due_time(group: Group) -> None:
    pod = copy.deepcopy(group.api.objects[("Pod", "ns", f"{group.name}-0")])
    pod["status"] = {"phase": "Failed"}
    assert gang.handle_pod_event(group.api, "MODIFIED", pod, CFG, at(0)) != []
    assert gang.handle_pod_event(group.api, "MODIFIED", pod, CFG, at(0)) == []
    assert gang.handle_pod_event(group.api, "MODIFIED", pod, CFG, at(1000)) == []  # old epoch
    assert group.epoch == 1 and group.restarts == 1
    # while backing off: the same failure seen again and again
    group.crash(at(100))
    writes = group.api.writes
    for t in (101, 105, 109):
        assert group.crash(at(t)) == []
    assert group.api.writes == writes  # nothing written again
    assert group.annotations[ANNOTATION_GANG_FAILED_AT] == "2026-01-01T00:01:40Z"
    # at the due time the event and the timer both see it: one restart
    assert group.crash(at(110)) != []
    assert group.resync(at(110)).gang_restarts == []
    assert group.crash(at(111)) == []  # the old epoch's pod, replayed
    assert group.epoch == 2 and group.restarts == 2


def test_a_postponed_restart_is_reported_once_with_its_time_and_cause(group: Group) -> None:
    """The handler posts this as a GangRestartDeferred event: one per postponed failure."""
    messages: list[str] = []

    def crash(t: int) -> list[str]:
        group.pods = group.api.add_pods(group.name) or group.pods  # the current epoch's pods
        pod = copy.deepcopy(group.api.objects[("Pod", "ns", f"{group.name}-1")])
        pod["status"] = {"phase": "Running", "containerStatuses": [dict(CRASHED)]}
        return gang.handle_pod_event(group.api, "MODIFIED", pod, CFG, at(t), messages.append)

    assert crash(0) != [] and messages == []  # the first restart is immediate: nothing to say
    for t in (100, 101, 105):  # the new epoch's pod crashes: restart 2 waits 10 s
        assert crash(t) == []
    assert len(messages) == 1, messages
    assert f"group {group.name} broke again after 1 gang restart in a row" in messages[0]
    assert "backing off until 2026-01-01T00:01:50Z" in messages[0]
    assert "restarted" in messages[0]  # the cause, as the Degraded condition gives it


def test_a_crash_inside_the_delayed_restart_is_finished_without_a_second_one(
    group: Group,
) -> None:
    group.crash(at(0))
    group.crash(at(100))
    writes = group.api.writes
    group.resync(at(101))  # not due yet: only the server-side apply of the plan's objects
    applies = group.api.writes - writes
    group.api.fail_after = group.api.writes + applies + 1  # then the gang patch, then crash
    with pytest.raises(ConnectionError):
        group.resync(at(110))  # the epoch is bumped, the old pods not yet deleted
    group.api.fail_after = None
    assert group.epoch == 2 and len(group.api.by_kind("Pod")) == 2
    assert group.resync(at(111)).gang_restarts == []  # finishes it: no third epoch
    assert not group.api.by_kind("Pod")
    assert group.epoch == 2 and group.restarts == 2


def test_backoff_off_restarts_at_once_every_time(api: Any, owner: Owner, helpers: Any) -> None:
    cfg = OperatorConfig(runtime_image="rt:1", gang_restart_backoff_seconds=0)
    group = Group(api, owner, helpers, cfg)
    for n in range(4):
        assert group.crash(at(n)) != []
    assert group.epoch == 4


# --------------------------------------------------------------------------- status
def test_degraded_names_group_count_reason_and_next_restart(group: Group) -> None:
    group.crash(at(0))
    group.crash(at(30))
    group.crash(at(40))  # restart 2 (30 s + 10 s)
    group.crash(at(70))  # waits 20 s: until 90 s
    group.resync(at(75))
    degraded = group.degraded()
    assert degraded["status"] == "True" and degraded["reason"] == "GroupFailing"
    message = degraded["message"]
    # the runtime's own reason, as before, then the back-off
    assert message.startswith(
        f"group {group.group}: pod {group.name}-1 container runtime restarted "
        "(last exit 2: Error: no weights)"
    )
    assert message.endswith(
        "backing off after 2 gang restarts in a row, next restart at 2026-01-01T00:01:30Z"
    )


def test_degraded_keeps_the_reason_when_the_failed_pod_is_gone(group: Group) -> None:
    group.crash(at(0))
    group.api.add_pods(group.name)
    victim = group.api.objects.pop(("Pod", "ns", f"{group.name}-0"))
    assert gang.handle_pod_event(group.api, "DELETED", victim, CFG, at(5)) == []
    group.api.add_pods(group.name)  # the StatefulSet controller puts it back, same epoch
    group.resync(at(6))
    message = group.degraded()["message"]
    assert f"group {group.group}: pod {group.name}-0: a member pod was deleted" in message
    assert "after 1 gang restart in a row, next restart at 2026-01-01T00:00:15Z" in message
    assert group.resync(at(15)).gang_restarts == [group.name]


# --------------------------------------------------------------------------- concurrency
def _after_the_next_read(api: Any, action: Any) -> None:
    """Run `action` (another handler, the timer) right after the next StatefulSet read, as
    if the reader stalled there: its snapshot is stale when it writes."""
    get = api.get
    pending = [action]

    def hooked(kind: Any, namespace: str, name: str) -> Any:
        obj = get(kind, namespace, name)
        if kind.kind == "StatefulSet" and pending:
            pending.pop()()
        return obj

    api.get = hooked


def test_a_deferral_read_before_a_restart_does_not_land_on_the_new_epoch(group: Group) -> None:
    group.crash(at(0))  # restart 1; the next waits 10 s
    pod0 = copy.deepcopy(group.api.add_pods(group.name)[0])
    pod0["status"] = {"phase": "Failed"}

    def meanwhile() -> None:
        group.crash(at(100))  # the other pod's failure is recorded first ...
        group.resync(at(110))  # ... and the timer restarts the group: epoch 2

    _after_the_next_read(group.api, meanwhile)
    # pod 0's handler read epoch 1 with nothing pending, so it would defer its failure
    assert gang.handle_pod_event(group.api, "MODIFIED", pod0, CFG, at(100)) == []
    assert group.epoch == 2 and group.restarts == 2
    assert ANNOTATION_GANG_PENDING not in group.annotations  # epoch 2 owes no restart
    group.api.add_pods(group.name)
    assert group.resync(at(1000)).gang_restarts == []
    assert group.epoch == 2


def test_a_restart_decided_on_a_stale_read_is_decided_again(group: Group) -> None:
    pod = copy.deepcopy(group.api.objects[("Pod", "ns", f"{group.name}-0")])
    pod["status"] = {"phase": "Failed"}
    # another write in between (the timer's apply): the handler reads again, restarts once
    _after_the_next_read(group.api, lambda: group.resync(at(0)))
    deleted = gang.handle_pod_event(group.api, "MODIFIED", pod, CFG, at(0))
    assert sorted(deleted) == sorted(p["metadata"]["name"] for p in group.pods)
    assert group.epoch == 1 and group.restarts == 1


def test_the_timer_leaves_a_group_another_writer_just_changed(group: Group) -> None:
    group.crash(at(0))
    group.crash(at(100))
    stale = copy.deepcopy(group.sts)  # the timer's snapshot: epoch 1, restart due at 110
    group.crash(at(110))  # but the pod event restarts first: epoch 2
    group.crash(at(120))  # and epoch 2's pods fail too: waits 20 s
    assert group.epoch == 2 and ANNOTATION_GANG_PENDING in group.annotations
    deleted, now = gang.resync_gang(
        group.api, "ns", group.owner, group.name, stale, False, CFG, at(121)
    )
    # no restart from the stale view, and epoch 2's pending failure is not lost
    assert deleted == [] and now is not None and gang.gang_epoch(now) == 2
    assert group.epoch == 2 and group.restarts == 2
    assert group.annotations[ANNOTATION_GANG_FAILED_AT] == "2026-01-01T00:02:00Z"
    assert group.resync(at(140)).gang_restarts == [group.name]
    assert group.epoch == 3
