"""Issue 13, item 11 (a): only Patroni's own identities can write its DCS; the stack CA's certificates cannot.

Whoever writes ``/service/cqox-cluster/leader`` in etcd decides which node is primary. Before, etcd trusted
every client certificate of the stack CA, and the shared server certificate (whose key PostgreSQL's OS user
reads) carried client auth, so PostgreSQL, any service holding that key and the powerless ``cqox-restricted``
Kubernetes identity could all write it.
"""

from __future__ import annotations

import base64
import warnings
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cqox_platform.stack.certs import issue_certificate, load_ca, tls_files
from cqox_platform.stack.kube.pki import kube_pki

PROBE_KEY = base64.b64encode(b"/cqox-trust-probe").decode()


def _put(url: str, cert: tuple[str, str]) -> str:
    """Try to write a key into etcd with ``cert``; 'written' or why not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # verify=False: this is about etcd verifying us, not us verifying etcd
        try:
            response = requests.post(
                f"{url}/v3/kv/put",
                json={"key": PROBE_KEY, "value": base64.b64encode(b"forged").decode()},
                cert=cert,
                verify=False,
                timeout=5,
            )
        except requests.exceptions.RequestException as exc:
            return f"refused ({type(exc).__name__})"
    return "written" if response.status_code == 200 and "header" in response.json() else f"HTTP {response.status_code}"


def _stack_ca_client(tmp_path: Path, tls_dir: Path) -> tuple[str, str]:
    """A brand-new client certificate from the stack CA, as any holder of that CA's trust would present."""
    key = ec.generate_private_key(ec.SECP256R1())
    tls = tls_files(tls_dir)
    cert = issue_certificate(*load_ca(tls.ca_cert, tls.ca_key), key.public_key(), common_name="intruder", client=True)
    cert_path, key_path = tmp_path / "intruder.crt", tmp_path / "intruder.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def _identities(ha_stack, tmp_path: Path) -> dict[str, tuple[str, str]]:
    node_home = ha_stack.service("patroni").nodes[0].home
    restricted = kube_pki(ha_stack.config.tls_dir).restricted
    return {
        # the copy in a Patroni node's directory, owned by and readable for the postgres OS user
        "shared server certificate (postgres-readable key)": (
            str(node_home / "server.crt"),
            str(node_home / "server.key"),
        ),
        "cqox-restricted Kubernetes identity": (str(restricted.cert), str(restricted.key)),
        "a new client certificate of the stack CA": _stack_ca_client(tmp_path, ha_stack.config.tls_dir),
    }


@pytest.mark.parametrize(
    "who",
    [
        "shared server certificate (postgres-readable key)",
        "cqox-restricted Kubernetes identity",
        "a new client certificate of the stack CA",
    ],
)
def test_etcd_refuses_every_identity_of_the_stack_ca(ha_stack, tmp_path, who):
    cert = _identities(ha_stack, tmp_path)[who]
    assert _put(ha_stack.service("etcd").url, cert) != "written", f"etcd accepted a write from the {who}"


def test_shared_server_certificate_is_server_only(ha_stack):
    cert = x509.load_pem_x509_certificate(tls_files(ha_stack.config.tls_dir).server_cert.read_bytes())
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_patroni_nodes_hold_client_only_certificates_of_the_etcd_ca_and_the_cluster_works(ha_stack):
    patroni = ha_stack.service("patroni")
    stack_ca = x509.load_pem_x509_certificate(tls_files(ha_stack.config.tls_dir).ca_cert.read_bytes())
    for node in patroni.nodes:
        cert = x509.load_pem_x509_certificate((node.home / "etcd-client.crt").read_bytes())
        assert cert.issuer != stack_ca.subject
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]
    assert patroni.healthy()  # one leader, every replica streaming: the nodes read and write the DCS
    assert ha_stack.service("etcd").healthy()
