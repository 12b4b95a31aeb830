"""Certificates, keys and kubeconfigs of the local Kubernetes API, all issued from the stack CA.

Kubernetes authenticates client certificates by their CN (user) and O (groups). The stack issues:

- ``apiserver``: the API server's serving certificate for 127.0.0.1/localhost and the in-cluster names;
- ``admin``: user ``cqox-admin`` in group ``system:masters`` (everything, as a cluster admin's kubeconfig);
- ``restricted``: user ``cqox-restricted`` in no group and bound to no role, so tests can prove that RBAC
  answers 403 Forbidden;
- ``monitoring``: user ``cqox-prometheus`` in group ``system:monitoring``, which the bootstrap RBAC policy lets
  read ``/metrics`` and the health endpoints and nothing else (what Prometheus scrapes the API server with);
- ``controller-manager``: user ``system:kube-controller-manager``, which the API server's bootstrap RBAC policy
  already authorises;
- ``node``: user ``system:node:cqox-node`` in group ``system:nodes``, the optional kubelet's identity, which the
  Node authorizer confines to its own node and the pods bound to it; ``kubelet``: that kubelet's serving
  certificate; ``scheduler``: user ``system:kube-scheduler``, authorised by the bootstrap RBAC policy;
- ``sa.key``/``sa.pub``: the key pair that signs and verifies service-account tokens;
- ``etcd-ca``, ``etcd-server``, ``etcd-client``: a separate CA for the storage link. kine (the etcd API) requires
  a client certificate from it and only the API server holds one, so no user certificate of the stack CA can
  reach the stored objects around RBAC.

Everything is made once per stack directory and reused; private keys and kubeconfigs are owner-only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cqox_platform.fsutil import write_private
from cqox_platform.stack.certs import ensure_leaf, load_ca, new_ca, tls_files, write_key

#: The first address of the service range is the ``kubernetes`` Service's cluster IP, so it is in the cert.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
IN_CLUSTER_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ADMIN_USER = "cqox-admin"
RESTRICTED_USER = "cqox-restricted"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
MONITORING_USER = "cqox-prometheus"
#: The optional node's name (``stack up --kube-node``); its kubelet authenticates as ``system:node:<name>``.
NODE_NAME = "cqox-node"
NODE_USER = f"system:node:{NODE_NAME}"
SCHEDULER_USER = "system:kube-scheduler"


@dataclass(frozen=True)
class Identity:
    """A client certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class KubePki:
    """Paths of the Kubernetes API's PEM files under ``tls/kube``."""

    directory: Path
    ca_cert: Path

    def _pair(self, name: str) -> Identity:
        return Identity(self.directory / f"{name}.crt", self.directory / f"{name}.key")

    @property
    def serving(self) -> Identity:
        return self._pair("apiserver")

    @property
    def admin(self) -> Identity:
        return self._pair("admin")

    @property
    def restricted(self) -> Identity:
        return self._pair("restricted")

    @property
    def monitoring(self) -> Identity:
        return self._pair("monitoring")

    @property
    def controller_manager(self) -> Identity:
        return self._pair("controller-manager")

    @property
    def node(self) -> Identity:
        return self._pair("node")

    @property
    def kubelet_serving(self) -> Identity:
        return self._pair("kubelet")

    @property
    def scheduler(self) -> Identity:
        return self._pair("scheduler")

    @property
    def etcd_ca_cert(self) -> Path:
        return self.directory / "etcd-ca.crt"

    @property
    def etcd_ca_key(self) -> Path:
        return self.directory / "etcd-ca.key"

    @property
    def etcd_server(self) -> Identity:
        return self._pair("etcd-server")

    @property
    def etcd_client(self) -> Identity:
        return self._pair("etcd-client")

    @property
    def service_account_key(self) -> Path:
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        return self.directory / "sa.pub"


def kube_pki(tls_dir: Path) -> KubePki:
    return KubePki(directory=tls_dir / "kube", ca_cert=tls_files(tls_dir).ca_cert)


def ensure_kube_pki(tls_dir: Path) -> KubePki:
    """Issue whatever of the Kubernetes PKI is missing; the stack CA must exist (``certs.ensure_tls``)."""
    pki = kube_pki(tls_dir)
    pki.directory.mkdir(parents=True, exist_ok=True)
    pki.directory.chmod(0o700)
    stack_ca = tls_files(tls_dir)
    ca_cert, ca_key = load_ca(stack_ca.ca_cert, stack_ca.ca_key)
    if not (pki.etcd_ca_cert.exists() and pki.etcd_ca_key.exists()):
        etcd_ca_cert, etcd_ca_key = new_ca("cqox-platform local etcd CA")
        write_key(pki.etcd_ca_key, etcd_ca_key)
        pki.etcd_ca_cert.write_bytes(etcd_ca_cert.public_bytes(serialization.Encoding.PEM))
        for stale in (pki.etcd_server, pki.etcd_client):  # issued by a CA that no longer exists
            stale.cert.unlink(missing_ok=True)
    etcd_ca = load_ca(pki.etcd_ca_cert, pki.etcd_ca_key)

    def leaf(identity: Identity, common_name: str, ca=(ca_cert, ca_key), **kwargs) -> None:
        ensure_leaf(identity.cert, identity.key, ca, common_name=common_name, **kwargs)

    leaf(
        pki.serving,
        "kube-apiserver",
        dns_names=("localhost", *IN_CLUSTER_NAMES),
        ip_addresses=("127.0.0.1", KUBERNETES_SERVICE_IP),
        server=True,
    )
    leaf(pki.admin, ADMIN_USER, organizations=("system:masters",), client=True)
    leaf(pki.restricted, RESTRICTED_USER, client=True)
    leaf(pki.controller_manager, CONTROLLER_MANAGER_USER, client=True)
    leaf(pki.monitoring, MONITORING_USER, organizations=("system:monitoring",), client=True)
    leaf(pki.node, NODE_USER, organizations=("system:nodes",), client=True)
    leaf(pki.kubelet_serving, NODE_NAME, dns_names=("localhost", NODE_NAME), ip_addresses=("127.0.0.1",), server=True)
    leaf(pki.scheduler, SCHEDULER_USER, client=True)
    leaf(pki.etcd_server, "kine", ca=etcd_ca, dns_names=("localhost",), ip_addresses=("127.0.0.1",), server=True)
    leaf(pki.etcd_client, "kube-apiserver-etcd-client", ca=etcd_ca, client=True)
    if not (pki.service_account_key.exists() and pki.service_account_pub.exists()):
        sa_key = ec.generate_private_key(ec.SECP256R1())
        write_key(pki.service_account_key, sa_key)
        pki.service_account_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki


def write_kubeconfig(path: Path, *, server: str, ca_cert: Path, identity: Identity, user: str) -> None:
    """A self-contained kubeconfig (certificates embedded) readable by the owner only."""

    def b64(file: Path) -> str:
        return base64.b64encode(file.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cqox-local", "cluster": {"server": server, "certificate-authority-data": b64(ca_cert)}}],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(identity.cert), "client-key-data": b64(identity.key)},
            }
        ],
        "contexts": [{"name": f"{user}@cqox-local", "context": {"cluster": "cqox-local", "user": user}}],
        "current-context": f"{user}@cqox-local",
        "preferences": {},
    }
    write_private(path, yaml.safe_dump(config, sort_keys=False))
