"""operator/kube.py's KubeApi against the real API server, where its behaviour is the
server's: a merge patch carrying a stale resourceVersion is refused as a Conflict (the gang
restart relies on it to never act on a stale read of a StatefulSet)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_a_stale_resource_version_is_a_conflict(admin_kubeconfig: Path, namespace: str) -> None:
    from kubernetes import config as k8s_config

    from statmux.operator.kinds import CONFIGMAP
    from statmux.operator.kube import Conflict, KubeApi

    api = KubeApi(k8s_config.new_client_from_config(config_file=str(admin_kubeconfig)))
    name = "resource-version-check"
    cm = api.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"a": "1"},
        }
    )
    version = cm["metadata"]["resourceVersion"]
    try:
        ok = api.merge_patch(
            CONFIGMAP,
            namespace,
            name,
            {"metadata": {"resourceVersion": version, "annotations": {"statmux.io/x": "1"}}},
        )
        assert ok is not None and ok["metadata"]["annotations"]["statmux.io/x"] == "1"
        with pytest.raises(Conflict, match=name):
            api.merge_patch(
                CONFIGMAP,
                namespace,
                name,
                {"metadata": {"resourceVersion": version, "annotations": {"statmux.io/x": "2"}}},
            )
        now = api.get(CONFIGMAP, namespace, name)
        assert now is not None and now["metadata"]["annotations"]["statmux.io/x"] == "1"
        # without a resourceVersion a merge patch still just applies
        assert api.merge_patch(CONFIGMAP, namespace, name, {"data": {"b": "2"}}) is not None
        assert api.merge_patch(CONFIGMAP, namespace, "missing", {"data": {}}) is None
    finally:
        api.delete(CONFIGMAP, namespace, name)
