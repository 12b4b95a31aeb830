"""The local stack's Kubernetes API: kine (etcd API on SQLite), kube-apiserver and kube-controller-manager.

The canary router and the manifest checks talk to a real API server, so VirtualService weights, RBAC denials
and Deployment rollouts behave as they do in a cluster. No kubelet runs unless the stack has a node
(``--kube-node``, ``node.py``): Pods are stored and stay Pending, which is all the platform needs of them. The
binaries come from ``scripts/build-kube.sh`` (built from Go modules into a cache directory). Clients
authenticate with client certificates issued by the stack CA (``pki.py``); ``stack env`` exports the paths of
their kubeconfigs, never their contents.
"""

from __future__ import annotations

from pathlib import Path

import requests

from cqox_platform.stack.certs import tls_files
from cqox_platform.stack.kube.build import CRDS_DIR, kube_build
from cqox_platform.stack.kube.pki import (
    ADMIN_USER,
    CONTROLLER_MANAGER_USER,
    RESTRICTED_USER,
    SERVICE_CLUSTER_IP_RANGE,
    KubePki,
    ensure_kube_pki,
    kube_pki,
    write_kubeconfig,
)
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


class KineService(Service):
    """kine serves the etcd v3 API from a SQLite file in its home directory (its default endpoint).

    It listens with TLS and requires a client certificate of the separate etcd CA, which only the API server has.
    """

    name = "kine"
    binaries = ("kine",)

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (kube_build().kine_bin_dir,)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        """The gRPC health service kine registers next to the etcd API, asked over mutual TLS."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        pki = kube_pki(self.stack.tls_dir)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.etcd_ca_cert.read_bytes(),
            private_key=pki.etcd_client.key.read_bytes(),
            certificate_chain=pki.etcd_client.cert.read_bytes(),
        )
        with grpc.secure_channel(f"127.0.0.1:{self.port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def start(self) -> None:
        pki = ensure_kube_pki(self.stack.tls_dir)
        self.home.mkdir(parents=True, exist_ok=True)
        pid = spawn(
            [
                find_binary("kine", self.binary_dirs),
                f"--listen-address=127.0.0.1:{self.port}",
                "--metrics-bind-address=0",
                f"--server-cert-file={pki.etcd_server.cert}",
                f"--server-key-file={pki.etcd_server.key}",
                f"--trusted-ca-file={pki.etcd_ca_cert}",
            ],
            log_path=self.log_path,
            cwd=self.home,  # the default endpoint is ./db/state.db
        )
        self.write_pid(pid)
        wait_until(self.healthy, timeout=self.start_timeout, what="kine", log_path=self.log_path, alive=self.running)


class KubeApiserverService(Service):
    """kube-apiserver on 127.0.0.1 with TLS 1.3, client-certificate authentication and Node,RBAC authorization."""

    name = "kube-apiserver"
    binaries = ("kube-apiserver",)
    start_timeout = 120.0

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (kube_build().kube_bin_dir,)

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("kube_apiserver")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pki(self) -> KubePki:
        return kube_pki(self.stack.tls_dir)

    @property
    def kubeconfig(self) -> Path:
        """Cluster-admin (``system:masters``) kubeconfig."""
        return self.stack.secrets_dir / "kubeconfig"

    @property
    def restricted_kubeconfig(self) -> Path:
        """Kubeconfig of ``cqox-restricted``, a user without any role binding."""
        return self.stack.secrets_dir / "kubeconfig-restricted"

    @property
    def controller_manager_kubeconfig(self) -> Path:
        return self.stack.secrets_dir / "kubeconfig-controller-manager"

    def get(self, path: str, *, timeout: float = 5) -> requests.Response:
        """A request as the admin user, verified against the stack CA."""
        admin = self.pki.admin
        return requests.get(
            f"{self.url}{path}", cert=(str(admin.cert), str(admin.key)), verify=str(self.pki.ca_cert), timeout=timeout
        )

    def healthy(self) -> bool:
        return self.get("/readyz", timeout=3).status_code == 200

    def write_kubeconfigs(self) -> None:
        """The three identities' kubeconfigs; rewritten on every ``up`` so they follow the port."""
        pki = ensure_kube_pki(self.stack.tls_dir)
        for path, identity, user in (
            (self.kubeconfig, pki.admin, ADMIN_USER),
            (self.restricted_kubeconfig, pki.restricted, RESTRICTED_USER),
            (self.controller_manager_kubeconfig, pki.controller_manager, CONTROLLER_MANAGER_USER),
        ):
            write_kubeconfig(path, server=self.url, ca_cert=pki.ca_cert, identity=identity, user=user)

    def start(self) -> None:
        pki = ensure_kube_pki(self.stack.tls_dir)
        self.write_kubeconfigs()
        (self.home / "certs").mkdir(parents=True, exist_ok=True)
        argv = [
            find_binary("kube-apiserver", self.binary_dirs),
            f"--etcd-servers=https://127.0.0.1:{self.stack.ports['kine']}",
            f"--etcd-cafile={pki.etcd_ca_cert}",
            f"--etcd-certfile={pki.etcd_client.cert}",
            f"--etcd-keyfile={pki.etcd_client.key}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            # The `kubernetes` Service's endpoints cannot be a loopback address; nothing here needs them.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki.serving.cert}",
            f"--tls-private-key-file={pki.serving.key}",
            "--tls-min-version=VersionTLS13",
            f"--client-ca-file={pki.ca_cert}",
            "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={self.home / 'certs'}",
            "--event-ttl=1h",
        ]
        pid = spawn(argv, log_path=self.log_path, cwd=self.home)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="kube-apiserver /readyz",
            log_path=self.log_path,
            alive=self.running,
            interval=0.5,
        )

    def after_start(self) -> None:
        """Kubeconfigs for the current port, then the Istio CRDs (server-side apply, idempotent)."""
        from kubernetes import config as kube_config

        from cqox_platform.stack.kube.crds import apply_crds

        self.write_kubeconfigs()
        api_client = kube_config.new_client_from_config(config_file=str(self.kubeconfig))
        try:
            apply_crds(api_client, CRDS_DIR)
        finally:
            api_client.close()

    def env(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "CQOX_KUBECONFIG": str(self.kubeconfig),
            "CQOX_KUBE_RESTRICTED_KUBECONFIG": str(self.restricted_kubeconfig),
            "CQOX_KUBE_API_URL": self.url,
            # No kubelet runs here: pods stay Pending, so a Deployment "rolled out" means the controller
            # manager observed its generation and replaced every replica (never "available").
            "CQOX_CANARY_STABLE_READY": "updated",
        }


class KubeControllerManagerService(Service):
    """kube-controller-manager, so Deployments get ReplicaSets (and Pods) and status as in a cluster.

    Each controller runs under its own service account (``--use-service-account-credentials``), as kubeadm
    sets it up; its own identity ``system:kube-controller-manager`` is authorised by the bootstrap RBAC policy.
    """

    name = "kube-controller-manager"
    binaries = ("kube-controller-manager",)
    start_timeout = 90.0

    def __init__(self, stack, apiserver: KubeApiserverService) -> None:
        super().__init__(stack)
        self.apiserver = apiserver

    @property
    def binary_dirs(self) -> tuple[Path, ...]:
        return (kube_build().kube_bin_dir,)

    @property
    def port(self) -> int | None:
        return self.stack.ports.get("kube_controller_manager")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        pki = kube_pki(self.stack.tls_dir)
        admin = pki.admin
        response = requests.get(
            f"{self.url}/healthz", cert=(str(admin.cert), str(admin.key)), verify=str(pki.ca_cert), timeout=3
        )
        return response.status_code == 200

    def start(self) -> None:
        pki = ensure_kube_pki(self.stack.tls_dir)
        self.apiserver.write_kubeconfigs()
        serving = tls_files(self.stack.tls_dir)  # the stack's localhost certificate
        kubeconfig = self.apiserver.controller_manager_kubeconfig
        argv = [
            find_binary("kube-controller-manager", self.binary_dirs),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            # Clients are verified with --client-ca-file alone; no front-proxy (request-header) CA is set up, so
            # reading the rest of the authentication config from the cluster would only log errors.
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={serving.server_cert}",
            f"--tls-private-key-file={serving.server_key}",
            "--tls-min-version=VersionTLS13",
            f"--client-ca-file={pki.ca_cert}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            "--cluster-name=cqox-local",
            "--profiling=false",
        ]
        self.home.mkdir(parents=True, exist_ok=True)
        pid = spawn(argv, log_path=self.log_path, cwd=self.home)
        self.write_pid(pid)
        wait_until(
            self.healthy,
            timeout=self.start_timeout,
            what="kube-controller-manager /healthz",
            log_path=self.log_path,
            alive=self.running,
            interval=0.5,
        )
