"""etcd 3.4 (Debian's etcd-server) as Patroni's distributed configuration store, over mutual TLS.

Each Patroni node reaches etcd through its own loopback address (127.0.0.11, .12, .13, see ``node_address``):
the whole 127.0.0.0/8 is local on Linux, so etcd simply listens on all four, and a network partition of one
node from etcd is a firewall rule on that node's address (``cqox_platform.ha.partition``) that leaves the
others and every PostgreSQL replication link untouched.

Trust: whoever can write the DCS can make any node leader, so etcd trusts one CA of its own,
``tls/etcd/ca.crt`` (key root-only), and nothing the stack CA signs: not the shared server certificate whose key
PostgreSQL can read, not a Kubernetes user certificate. That CA issues exactly:

- one client-only certificate per Patroni node (CN ``patroni-nodeN``), copied into that node's directory;
- the stack's own probe identity (CN ``cqox-stack-probe``, root-only) for health checks;
- etcd's serving certificate, which also carries client auth because etcd 3.4's gRPC gateway (the JSON API
  Patroni's etcd3 client speaks) dials etcd itself with the serving certificate and is refused otherwise; its key
  stays in etcd's root-only home. etcd 3.5 adds ``--client-cert-file`` to separate the two; with it this
  certificate can become server-only.

This is etcd's and Patroni's documented setup: a CA dedicated to DCS clients, not the CA that signs services.
"""

from __future__ import annotations

from pathlib import Path

import requests

from cqox_platform.ha.addresses import node_address
from cqox_platform.stack.certs import ensure_ca, ensure_leaf
from cqox_platform.stack.config import StackConfig
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

NODE_COUNT = 3
PROBE_IDENTITY = "cqox-stack-probe"


def etcd_pki_dir(stack: StackConfig) -> Path:
    return stack.tls_dir / "etcd"


def etcd_ca_cert(stack: StackConfig) -> Path:
    """The CA etcd trusts for clients and Patroni trusts for etcd."""
    return etcd_pki_dir(stack) / "ca.crt"


def _etcd_ca(stack: StackConfig):
    directory = etcd_pki_dir(stack)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    return ensure_ca(directory / "ca.crt", directory / "ca.key", "cqox-platform local etcd CA (Patroni DCS)")


def ensure_etcd_client(stack: StackConfig, name: str) -> tuple[Path, Path]:
    """A client-only certificate and key from the etcd CA for identity ``name`` (root-only until copied)."""
    directory = etcd_pki_dir(stack)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    ensure_leaf(cert, key, _etcd_ca(stack), common_name=name, client=True)
    return cert, key


class EtcdService(Service):
    name = "etcd"
    binaries = ("etcd",)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def cert(self) -> Path:
        return self.home / "etcd.crt"

    @property
    def key(self) -> Path:
        return self.home / "etcd.key"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.ports['etcd_metrics']}"

    def client_urls(self) -> list[str]:
        return [self.url] + [f"https://{node_address(i)}:{self.port}" for i in range(1, NODE_COUNT + 1)]

    def _ensure_cert(self) -> None:
        """etcd's serving certificate for every address it listens on, from the etcd CA (see the module doc)."""
        ca = _etcd_ca(self.stack)
        if self.cert.exists() and _issuer(self.cert) != ca[0].subject:  # issued by the stack CA on older stacks
            self.cert.unlink()
        ensure_leaf(
            self.cert,
            self.key,
            ca,
            common_name="cqox-etcd",
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1", *(node_address(i) for i in range(1, NODE_COUNT + 1))),
            server=True,
            # etcd 3.4's gRPC gateway dials etcd itself with this certificate when client certificates are required.
            client=True,
        )

    def healthy(self) -> bool:
        cert, key = ensure_etcd_client(self.stack, PROBE_IDENTITY)
        # verify= per request: a Session's verify loses to REQUESTS_CA_BUNDLE from the environment.
        response = requests.get(
            f"{self.url}/health", verify=str(etcd_ca_cert(self.stack)), cert=(str(cert), str(key)), timeout=2
        )
        return response.json().get("health") == "true"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self._ensure_cert()
        # A single member: the peer listener only has to exist, so it stays plain HTTP on loopback.
        peer = f"http://127.0.0.1:{self.stack.ports['etcd_peer']}"
        pid = spawn(
            [
                find_binary("etcd"),
                "--name=cqox-etcd",
                f"--data-dir={self.home / 'data'}",
                f"--listen-client-urls={','.join(self.client_urls())}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=cqox-etcd={peer}",
                "--initial-cluster-state=new",
                f"--cert-file={self.cert}",
                f"--key-file={self.key}",
                "--client-cert-auth",
                f"--trusted-ca-file={etcd_ca_cert(self.stack)}",
                # /metrics and /health only, plain HTTP on loopback: Prometheus needs no DCS client identity
                # (any certificate the etcd CA issues may write the leader key; etcd 3.4 has no RBAC here).
                f"--listen-metrics-urls={self.metrics_url}",
                "--logger=zap",
                "--log-level=warn",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(self.healthy, timeout=self.start_timeout, what="etcd", log_path=self.log_path, alive=self.running)

    def env(self) -> dict[str, str]:
        return {"CQOX_ETCD_URL": self.url}


def _issuer(cert_path: Path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(cert_path.read_bytes()).issuer
