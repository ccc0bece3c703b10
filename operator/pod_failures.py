"""Why a group's pod is failing, in the words a user reads in `kubectl describe pod`.

The ModelSet's `Degraded` condition names the failing group and this reason, so that a
crash-looping runtime (a bad image, a missing GPU, an out-of-memory kill) is visible on the
object the user applied, without hunting for pods.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

# Waiting reasons that mean "this will not start by itself" (kubelet's names), as opposed to
# ContainerCreating / PodInitializing, which are progress.
FAILING_WAIT_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
MESSAGE_TAIL = 160  # a termination message can be a whole traceback: its end says why


def _tail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_TAIL else "..." + text[-MESSAGE_TAIL:]


def _terminated(term: Obj) -> str | None:
    code = int(term.get("exitCode") or 0)
    if code == 0:
        return None
    what = f"exit {code}"
    if term.get("reason"):
        what += f": {term['reason']}"
    if term.get("message"):
        what += f": {_tail(str(term['message']))}"
    return what


def container_failure(c: Obj) -> str | None:
    """One container status: why it fails, or None while it runs or starts normally."""
    state = c.get("state") or {}
    last = (c.get("lastState") or {}).get("terminated") or {}
    name = c.get("name", "?")
    waiting = state.get("waiting") or {}
    if waiting.get("reason") in FAILING_WAIT_REASONS:
        why = f"container {name}: {waiting['reason']}"
        previous = _terminated(last)
        if previous:
            why += f" (last {previous})"
        elif waiting.get("message"):
            why += f" ({_tail(str(waiting['message']))})"
        return why
    now = _terminated(state.get("terminated") or {})
    if now:
        return f"container {name}: {now}"
    if int(c.get("restartCount") or 0) > 0:
        previous = _terminated(last)
        if previous:
            return f"container {name} restarted (last {previous})"
    return None


def pod_failure(pod: Obj) -> str | None:
    """Why this pod fails, naming it (None when it runs or is starting normally)."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for c in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        why = container_failure(c)
        if why:
            return f"pod {name} {why}"
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        message = status.get("message")
        return f"pod {name} failed: {reason}" + (f" ({_tail(str(message))})" if message else "")
    return None
