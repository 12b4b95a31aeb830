"""``KubernetesResource`` against the stack's real API server: every error class, and server-side apply."""

from __future__ import annotations

import base64
import copy
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cqox_platform.resources.kubernetes import (
    KubernetesConflictError,
    KubernetesError,
    KubernetesForbiddenError,
    KubernetesInvalidError,
    KubernetesNotFoundError,
    KubernetesResource,
    KubernetesUnreachableError,
)
from cqox_platform.stack import Stack
from cqox_platform.stack.kube.pki import kube_pki

VS = ("networking.istio.io", "v1", "virtualservices")


@pytest.fixture(scope="module")
def kube(stack: Stack) -> Iterator[KubernetesResource]:
    resource = KubernetesResource(kubeconfig=stack.env()["CQOX_KUBECONFIG"])
    yield resource
    resource.close()


@pytest.fixture
def namespace(kube: KubernetesResource) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.call(f"deleting namespace {name}", lambda: kube.core().delete_namespace(name))


def _kubeconfig_variant(stack: Stack, path: Path, *, server: str | None = None, ca: Path | None = None) -> str:
    """A copy of the admin kubeconfig pointing at another server or trusting another CA."""
    config = yaml.safe_load(Path(stack.env()["CQOX_KUBECONFIG"]).read_text())
    cluster = config["clusters"][0]["cluster"]
    if server:
        cluster["server"] = server
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return str(path)


def _virtual_service(namespace: str, weights: tuple[int, int] = (90, 10)) -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "cqox-engine", "namespace": namespace},
        "spec": {
            "hosts": ["cqox-engine"],
            "http": [
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": "cqox-engine", "subset": "v1"}, "weight": weights[0]},
                        {"destination": {"host": "cqox-engine", "subset": "v2"}, "weight": weights[1]},
                    ],
                }
            ],
        },
    }


# --- unreachable --------------------------------------------------------------------------------------------


def test_closed_port_is_unreachable_with_a_clear_message(stack, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = f"https://127.0.0.1:{port}"
    kube = KubernetesResource(kubeconfig=_kubeconfig_variant(stack, tmp_path / "kc", server=server))
    with pytest.raises(KubernetesUnreachableError) as raised:
        kube.get("v1", "ConfigMap", "anything", "default")
    message = str(raised.value)
    assert server in message
    assert "connection refused" in message
    assert "stack status" in message  # what to do next
    with pytest.raises(KubernetesUnreachableError, match="connection refused"):
        kube.call("listing pods", lambda: kube.core().list_namespaced_pod("default"))


def test_silent_server_times_out_instead_of_hanging(stack, tmp_path):
    """A server that accepts the connection and never answers: every request has a timeout, discovery too."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        server = f"https://127.0.0.1:{silent.getsockname()[1]}"
        kube = KubernetesResource(
            kubeconfig=_kubeconfig_variant(stack, tmp_path / "kc", server=server), request_timeout=1.0
        )
        started = time.monotonic()
        with pytest.raises(KubernetesUnreachableError, match="no answer within the request timeout"):
            kube.dynamic()
        with pytest.raises(KubernetesUnreachableError, match="no answer within the request timeout"):
            kube.call("reading a ConfigMap", lambda: kube.core().read_namespaced_config_map("x", "default"))
        assert time.monotonic() - started < 30  # two requests of at most two tries of 1 s each, not forever


def test_untrusted_server_certificate_is_a_tls_error(stack, tmp_path):
    other_ca = kube_pki(stack.config.tls_dir).etcd_ca_cert  # a real CA, but not the one that signed the server
    kube = KubernetesResource(kubeconfig=_kubeconfig_variant(stack, tmp_path / "kc", ca=other_ca))
    with pytest.raises(KubernetesUnreachableError) as raised:
        kube.call("listing namespaces", lambda: kube.core().list_namespace())
    assert "did not verify against the kubeconfig's CA" in str(raised.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)


def test_missing_kubeconfig_and_no_cluster_are_clear(tmp_path, monkeypatch):
    with pytest.raises(KubernetesError, match="cannot load Kubernetes credentials"):
        KubernetesResource(kubeconfig=str(tmp_path / "absent")).api_client()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubernetesError, match=r"cannot load Kubernetes credentials \(in-cluster\)"):
        KubernetesResource().api_client()


def test_from_settings_uses_the_kubeconfig_when_set_and_in_cluster_otherwise(stack, monkeypatch):
    monkeypatch.setenv("CQOX_KUBECONFIG", stack.env()["CQOX_KUBECONFIG"])
    with dg.build_resources({"kubernetes": KubernetesResource.from_settings()}) as resources:
        kube = resources.kubernetes  # as a run sees it
        assert kube.kubeconfig == stack.env()["CQOX_KUBECONFIG"]
        assert kube.server == stack.env()["CQOX_KUBE_API_URL"]
        assert kube.get("v1", "Namespace", "default")["metadata"]["name"] == "default"
    monkeypatch.delenv("CQOX_KUBECONFIG")
    assert KubernetesResource.from_settings().kubeconfig is None


# --- forbidden, not found ----------------------------------------------------------------------------------


def test_restricted_user_is_forbidden_and_the_message_names_user_and_verb(stack, kube, namespace):
    kube.apply(_virtual_service(namespace))
    restricted = KubernetesResource(kubeconfig=stack.env()["CQOX_KUBE_RESTRICTED_KUBECONFIG"], namespace=namespace)
    try:
        with pytest.raises(KubernetesForbiddenError) as read:
            restricted.get_custom(*VS, "cqox-engine")
        assert 'User "cqox-restricted" cannot get resource "virtualservices"' in str(read.value)
        assert f'in the namespace "{namespace}"' in str(read.value)
        with pytest.raises(KubernetesForbiddenError) as applied:
            restricted.apply(_virtual_service(namespace, (50, 50)))
        assert 'User "cqox-restricted" cannot patch resource "virtualservices"' in str(applied.value)
        with pytest.raises(KubernetesForbiddenError, match='cannot list resource "pods"'):
            restricted.call("listing pods", lambda: restricted.core().list_namespaced_pod(namespace))
    finally:
        restricted.close()
    # Nothing changed: the denied apply left the weights alone.
    assert [r["weight"] for r in kube.get_custom(*VS, "cqox-engine", namespace)["spec"]["http"][0]["route"]] == [
        90,
        10,
    ]


def test_missing_objects_and_apis_are_not_found(kube, namespace):
    with pytest.raises(KubernetesNotFoundError, match='configmaps "absent" not found'):
        kube.get("v1", "ConfigMap", "absent", namespace)
    with pytest.raises(KubernetesNotFoundError, match=r'virtualservices\.networking\.istio\.io "absent" not found'):
        kube.get_custom(*VS, "absent", namespace)
    with pytest.raises(KubernetesNotFoundError, match="CustomResourceDefinition installed"):
        kube.apply(
            {"apiVersion": "example.invalid/v1", "kind": "Nothing", "metadata": {"name": "x", "namespace": namespace}}
        )


# --- conflict, invalid ----------------------------------------------------------------------------------------


def test_replace_with_a_stale_resource_version_conflicts_and_a_fresh_read_succeeds(kube, namespace):
    kube.apply(_virtual_service(namespace))
    mine = kube.get_custom(*VS, "cqox-engine", namespace)
    theirs = copy.deepcopy(mine)
    theirs["spec"]["http"][0]["route"][0]["weight"], theirs["spec"]["http"][0]["route"][1]["weight"] = 50, 50
    kube.replace_custom(*VS, theirs, namespace)  # another writer got there first

    mine["spec"]["http"][0]["route"][0]["weight"], mine["spec"]["http"][0]["route"][1]["weight"] = 0, 100
    with pytest.raises(KubernetesConflictError) as raised:
        kube.replace_custom(*VS, mine, namespace)
    assert "the object has been modified" in str(raised.value)
    assert "re-read" in str(raised.value)
    assert [r["weight"] for r in kube.get_custom(*VS, "cqox-engine", namespace)["spec"]["http"][0]["route"]] == [
        50,
        50,
    ]

    fresh = kube.get_custom(*VS, "cqox-engine", namespace)
    fresh["spec"]["http"][0]["route"][0]["weight"], fresh["spec"]["http"][0]["route"][1]["weight"] = 0, 100
    updated = kube.replace_custom(*VS, fresh, namespace)
    assert [r["weight"] for r in updated["spec"]["http"][0]["route"]] == [0, 100]


def test_weight_over_100_is_invalid_whether_applied_or_replaced(kube, namespace):
    with pytest.raises(KubernetesInvalidError) as applied:
        kube.apply(_virtual_service(namespace, (150, -50)))
    message = str(applied.value)
    assert "spec.http[0].route[0].weight" in message
    assert "less than or equal to 100" in message
    assert "spec.http[0].route[1].weight" in message  # -50 too

    kube.apply(_virtual_service(namespace))
    body = kube.get_custom(*VS, "cqox-engine", namespace)
    body["spec"]["http"][0]["route"][0]["weight"] = 150
    with pytest.raises(KubernetesInvalidError, match="less than or equal to 100"):
        kube.replace_custom(*VS, body, namespace)


# --- server-side apply ----------------------------------------------------------------------------------------


def test_server_side_apply_is_idempotent_and_owned_by_the_platform(kube, namespace):
    first = kube.apply(_virtual_service(namespace))
    second = kube.apply(_virtual_service(namespace))
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    assert second["metadata"]["generation"] == first["metadata"]["generation"] == 1
    managers = {(f["manager"], f["operation"]) for f in second["metadata"]["managedFields"]}
    assert managers == {("cqox-platform", "Apply")}

    changed = kube.apply(_virtual_service(namespace, (80, 20)))
    assert changed["metadata"]["generation"] == 2
    assert [r["weight"] for r in changed["spec"]["http"][0]["route"]] == [80, 20]


def test_apply_takes_back_fields_another_manager_changed_only_when_forced(kube, namespace):
    kube.apply(_virtual_service(namespace))
    other = KubernetesResource(kubeconfig=kube.kubeconfig, field_manager="kubectl-edit")
    try:
        other.apply(_virtual_service(namespace, (70, 30)))  # a hand edit with another manager, forced
    finally:
        other.close()
    with pytest.raises(KubernetesConflictError, match="kubectl-edit"):
        kube.apply(_virtual_service(namespace), force=False)
    taken_back = kube.apply(_virtual_service(namespace))
    assert [r["weight"] for r in taken_back["spec"]["http"][0]["route"]] == [90, 10]
