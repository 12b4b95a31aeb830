"""``KubernetesClient``: the official Kubernetes client, from a kubeconfig or in-cluster, with clear errors.

Every request goes through ``call``, which turns the client's exceptions into the platform's errors
(``cqox_platform.kube.errors``): the API server unreachable (or its certificate untrusted), forbidden (naming the
user and verb when the server says), not found, conflict (a stale ``resourceVersion``: the caller re-reads and
retries), invalid (the server's validation message). Every request has a connect and read timeout
(``request_timeout``), discovery included. ``KubernetesResource`` is the code location's adapter over it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.dynamic import DynamicClient

from cqox_platform.kube.errors import KubernetesError, KubernetesNotFoundError, translate

T = TypeVar("T")


def _default_timeout(api: k8s.ApiClient, seconds: float) -> None:
    """Give every request of this client a connect and read timeout unless the caller passed its own.

    The generated client sends no timeout unless each call names ``_request_timeout`` (discovery never does),
    and an API server that accepts the connection but never answers would then hang a run forever.
    """
    rest = api.rest_client
    send = rest.request

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return send(method, url, *args, _request_timeout=_request_timeout or (seconds, seconds), **kwargs)

    rest.request = request


class KubernetesClient:
    """A Kubernetes API client. ``kubeconfig`` empty: in-cluster service-account credentials."""

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str = "cqox",
        request_timeout: float = 15.0,
        field_manager: str = "cqox-platform",
    ) -> None:
        self.kubeconfig, self.context, self.namespace = kubeconfig, context, namespace
        self.request_timeout, self.field_manager = request_timeout, field_manager
        self._api: k8s.ApiClient | None = None
        self._dynamic: DynamicClient | None = None

    def __repr__(self) -> str:
        return f"KubernetesClient({self.kubeconfig or 'in-cluster'!r}, namespace={self.namespace!r})"

    def api_client(self) -> k8s.ApiClient:
        if self._api is None:
            configuration = k8s.Configuration()
            try:
                if self.kubeconfig:
                    k8s_config.load_kube_config(
                        config_file=self.kubeconfig, context=self.context, client_configuration=configuration
                    )
                else:
                    k8s_config.load_incluster_config(client_configuration=configuration)
            except (k8s_config.ConfigException, OSError) as exc:
                raise KubernetesError(
                    f"cannot load Kubernetes credentials ({self.kubeconfig or 'in-cluster'}): {exc}"
                ) from None
            configuration.retries = 1
            api = k8s.ApiClient(configuration)
            _default_timeout(api, self.request_timeout)
            self._api = api
        return self._api

    @property
    def server(self) -> str:
        return self.api_client().configuration.host

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return translate(self.server, what, fn)

    # --- typed APIs -------------------------------------------------------------------------------------------

    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api_client())

    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api_client())

    def batch(self) -> k8s.BatchV1Api:
        return k8s.BatchV1Api(self.api_client())

    def autoscaling(self) -> k8s.AutoscalingV2Api:
        return k8s.AutoscalingV2Api(self.api_client())

    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api_client())

    def dynamic(self) -> DynamicClient:
        """The dynamic client, created once (its discovery is cached and refreshed when a kind is missing)."""
        if self._dynamic is None:
            self._dynamic = self.call("discovering the API", lambda: DynamicClient(self.api_client()))
        return self._dynamic

    # --- objects ----------------------------------------------------------------------------------------------

    def get_custom(self, group: str, version: str, plural: str, name: str, namespace: str | None = None) -> dict:
        ns = namespace or self.namespace
        return self.call(
            f"reading {plural}/{name} in {ns}",
            lambda: self.custom().get_namespaced_custom_object(
                group, version, ns, plural, name, _request_timeout=self.request_timeout
            ),
        )

    def replace_custom(self, group: str, version: str, plural: str, body: dict, namespace: str | None = None) -> dict:
        """PUT the whole object: guarded by the ``resourceVersion`` it carries (409 if it changed)."""
        ns = namespace or self.namespace
        name = body["metadata"]["name"]
        return self.call(
            f"updating {plural}/{name} in {ns}",
            lambda: self.custom().replace_namespaced_custom_object(
                group, version, ns, plural, name, body, _request_timeout=self.request_timeout
            ),
        )

    def _resource(self, api_version: str, kind: str) -> Any:
        """The dynamic client's API of a kind; ``KubernetesNotFoundError`` when the server serves none."""
        return self.call(
            f"finding the API of {api_version} {kind}",
            lambda: self.dynamic().resources.get(api_version=api_version, kind=kind),
        )

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply one manifest with field manager ``cqox-platform``; returns the live object.

        ``force`` takes over fields another manager set (a hand edit); without it such a field is a conflict.
        """
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace")
        resource = self._resource(manifest["apiVersion"], kind)
        applied = self.call(
            f"applying {kind}/{name}",
            lambda: resource.server_side_apply(
                body=manifest,
                name=name,
                namespace=namespace if resource.namespaced else None,
                field_manager=self.field_manager,
                force_conflicts=force,
                _request_timeout=self.request_timeout,
            ),
        )
        return applied.to_dict()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        resource = self._resource(api_version, kind)
        return self.call(
            f"reading {kind}/{name}",
            lambda: resource.get(
                name=name,
                namespace=(namespace or self.namespace) if resource.namespaced else None,
                _request_timeout=self.request_timeout,
            ),
        ).to_dict()

    def find(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """Like ``get``, but ``None`` when the object does not exist (a missing API still raises)."""
        self._resource(api_version, kind)
        try:
            return self.get(api_version, kind, name, namespace)
        except KubernetesNotFoundError:
            return None

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
            self._dynamic = None
