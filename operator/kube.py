"""A small Kubernetes API facade: server-side apply, get, list, delete, merge-patch.

The reconciler talks to the `Api` protocol only, so its logic is unit-tested against an
in-memory store; `KubeApi` is the real one (kubernetes' ApiClient, raw REST calls, no
discovery round-trips except `served`).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from statmux.operator.kinds import Kind

Obj = dict[str, Any]
FIELD_MANAGER = "statmux-operator"


class Conflict(Exception):
    """A merge patch carried `metadata.resourceVersion` and the object has changed since:
    someone else wrote first, so the writer must read again and decide again."""


class Api(Protocol):
    def apply(self, obj: Obj, manager: str = FIELD_MANAGER) -> Obj:
        """Server-side apply (create or update to exactly these fields); returns the object."""
        ...

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None: ...

    def list(self, kind: Kind, namespace: str, labels: dict[str, str]) -> list[Obj]: ...

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        """True if something was deleted; a missing object is not an error."""
        ...

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Obj) -> Obj | None:
        """JSON merge patch; None if the object is gone. A `metadata.resourceVersion` in
        the patch is a precondition: `Conflict` when the object has moved on."""
        ...

    def served(self, kind: Kind) -> bool:
        """Whether the API server serves this kind (its CRD is installed)."""
        ...


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class KubeApi:
    """The real API server, through kubernetes' ApiClient (kubeconfig or in-cluster)."""

    def __init__(self, client: Any = None) -> None:
        from kubernetes import client as k8s
        from kubernetes import config as k8s_config

        if client is None:
            try:
                k8s_config.load_incluster_config()
            except k8s_config.ConfigException:
                k8s_config.load_kube_config()
            client = k8s.ApiClient()
        self._client = client
        self._served: dict[tuple[str, str], bool] = {}

    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        if hasattr(self._client, "param_serialize"):  # kubernetes >= 33 (new generator)
            method_, url, hdrs, body_, _ = self._client.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self._client.call_api(method_, url, header_params=hdrs, body=body_)
            status, data = resp.status, resp.read()
            if status == 404:
                return None
            if status >= 400:
                raise ApiException(status=status, reason=resp.reason, body=data)
        else:  # older clients
            try:
                resp = self._client.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _return_http_data_only=True,
                )
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            data = resp.data
        return json.loads(data) if data else {}

    def apply(self, obj: Obj, manager: str = FIELD_MANAGER) -> Obj:
        from statmux.operator.kinds import kind_of

        kind = kind_of(obj)
        meta = obj["metadata"]
        out = self._call(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            query=[("fieldManager", manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        if out is None:  # the kind is not served
            raise LookupError(f"the API server does not serve {kind.api_version} {kind.kind}")
        return out

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        return self._call("GET", kind.path(namespace, name))

    def list(self, kind: Kind, namespace: str, labels: dict[str, str]) -> list[Obj]:
        out = self._call(
            "GET", kind.path(namespace), query=[("labelSelector", label_selector(labels))]
        )
        if out is None:
            return []
        items: list[Obj] = out.get("items", [])
        # Lists omit apiVersion/kind per item; restore them so callers can route by kind.
        for item in items:
            item.setdefault("apiVersion", kind.api_version)
            item.setdefault("kind", kind.kind)
        return items

    def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        out = self._call(
            "DELETE",
            kind.path(namespace, name),
            body={"propagationPolicy": "Background"},
        )
        return out is not None

    def merge_patch(self, kind: Kind, namespace: str, name: str, patch: Obj) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call(
                "PATCH",
                kind.path(namespace, name),
                query=[("fieldManager", FIELD_MANAGER + "-gang")],
                body=patch,
                content_type="application/merge-patch+json",
            )
        except ApiException as err:
            if err.status == 409:
                raise Conflict(f"{kind.kind} {namespace}/{name} changed: {err.reason}") from err
            raise

    def served(self, kind: Kind) -> bool:
        key = (kind.api_version, kind.plural)
        if key not in self._served:
            prefix = "/api/v1" if kind.group == "" else f"/apis/{kind.api_version}"
            out = self._call("GET", prefix)
            names = {r.get("name") for r in (out or {}).get("resources", [])}
            self._served[key] = kind.plural in names
        return self._served[key]

    def forget_discovery(self) -> None:
        """Look CRDs up again (e.g. LWS installed after the operator started)."""
        self._served.clear()
