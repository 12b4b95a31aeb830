"""``KubernetesResource``: the Dagster adapter over the core ``KubernetesClient`` (``cqox_platform.kube``).

The methods delegate to one client per resource instance (its discovery cache lives as long as the run);
the errors are re-exported for callers that import them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient
from pydantic import PrivateAttr

from cqox_platform.kube.client import KubernetesClient
from cqox_platform.kube.errors import (  # noqa: F401 - re-exported for callers of the resource
    KubernetesConflictError,
    KubernetesError,
    KubernetesForbiddenError,
    KubernetesInvalidError,
    KubernetesNotFoundError,
    KubernetesUnreachableError,
)
from cqox_platform.resources.settings_backed import SettingsBackedResource, path_str
from cqox_platform.settings import Settings, get_settings

T = TypeVar("T")


class KubernetesResource(SettingsBackedResource):
    """A Kubernetes API client. ``kubeconfig`` empty: in-cluster service-account credentials."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "cqox"
    request_timeout: float = 15.0
    field_manager: str = "cqox-platform"

    _client: KubernetesClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> KubernetesResource:
        """``CQOX_KUBECONFIG`` when set (the local stack, a workstation); in-cluster credentials otherwise."""
        return cls(kubeconfig=path_str((settings or get_settings()).kubeconfig))

    def client(self) -> KubernetesClient:
        if self._client is None:
            self._client = KubernetesClient(
                self.kubeconfig, self.context, self.namespace, self.request_timeout, self.field_manager
            )
        return self._client

    # --- delegation: the client's API, as assets, core code and tests call it on the resource -----------------

    def api_client(self) -> k8s.ApiClient:
        return self.client().api_client()

    @property
    def server(self) -> str:
        return self.client().server

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return self.client().call(what, fn)

    def core(self) -> k8s.CoreV1Api:
        return self.client().core()

    def apps(self) -> k8s.AppsV1Api:
        return self.client().apps()

    def batch(self) -> k8s.BatchV1Api:
        return self.client().batch()

    def autoscaling(self) -> k8s.AutoscalingV2Api:
        return self.client().autoscaling()

    def custom(self) -> k8s.CustomObjectsApi:
        return self.client().custom()

    def dynamic(self) -> DynamicClient:
        return self.client().dynamic()

    def get_custom(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> dict:
        return self.client().get_custom(group, version, plural, name, namespace)

    def replace_custom(self, group: str, version: str, plural: str, body: dict, namespace: str | None = None) -> dict:
        return self.client().replace_custom(group, version, plural, body, namespace)

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        return self.client().apply(manifest, force=force)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.client().get(api_version, kind, name, namespace)

    def find(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.client().find(api_version, kind, name, namespace)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
