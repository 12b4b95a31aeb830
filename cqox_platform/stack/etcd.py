"""etcd 3.4 (Debian's etcd-server) as Patroni's distributed configuration store, over mutual TLS.

Each Patroni node reaches etcd through its own loopback address (127.0.0.11, .12, .13, see ``node_address``):
the whole 127.0.0.0/8 is local on Linux, so etcd simply listens on all four, and a network partition of one
node from etcd is a firewall rule on that node's address (``cqox_platform.ha.partition``) that leaves the
others and every PostgreSQL replication link untouched.
"""

from __future__ import annotations

from pathlib import Path

import requests

from cqox_platform.stack.certs import ensure_leaf, load_ca, tls_files
from cqox_platform.stack.process import find_binary, spawn, wait_until
from cqox_platform.stack.service import Service

NODE_COUNT = 3


def node_address(index: int) -> str:
    """The loopback address node ``index`` (1-based) uses to reach etcd."""
    return f"127.0.0.{10 + index}"


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

    def client_urls(self) -> list[str]:
        return [self.url] + [f"https://{node_address(i)}:{self.port}" for i in range(1, NODE_COUNT + 1)]

    def _ensure_cert(self) -> None:
        """A server certificate naming every address etcd listens on, signed by the stack CA."""
        tls = tls_files(self.stack.tls_dir)
        ensure_leaf(
            self.cert,
            self.key,
            load_ca(tls.ca_cert, tls.ca_key),
            common_name="cqox-etcd",
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1", *(node_address(i) for i in range(1, NODE_COUNT + 1))),
            server=True,
            # etcd's gRPC gateway dials etcd itself with this certificate when client certificates are required.
            client=True,
        )

    def healthy(self) -> bool:
        tls = tls_files(self.stack.tls_dir)
        # verify= per request: a Session's verify loses to REQUESTS_CA_BUNDLE from the environment.
        response = requests.get(
            f"{self.url}/health", verify=str(tls.ca_cert), cert=(str(tls.server_cert), str(tls.server_key)), timeout=2
        )
        return response.json().get("health") == "true"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self._ensure_cert()
        tls = tls_files(self.stack.tls_dir)
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
                f"--trusted-ca-file={tls.ca_cert}",
                "--logger=zap",
                "--log-level=warn",
            ],
            log_path=self.log_path,
        )
        self.write_pid(pid)
        wait_until(self.healthy, timeout=self.start_timeout, what="etcd", log_path=self.log_path, alive=self.running)

    def env(self) -> dict[str, str]:
        return {"CQOX_ETCD_URL": self.url}
