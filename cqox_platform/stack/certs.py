"""A private certificate authority for the local stack, so every service speaks verified TLS.

The CA and server certificate are made once per stack directory with ``cryptography`` (ECDSA P-256) and
reused on later ``stack up``; clients verify the server against ``ca.crt`` and the name 127.0.0.1/localhost.
The CA and leaf helpers themselves live in the core (``cqox_platform.pki``), which scratch servers use too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from cqox_platform.pki import VALIDITY, issue_certificate, load_ca, new_ca, write_key, write_private_key

__all__ = [
    "VALIDITY",
    "TlsFiles",
    "allows_client_auth",
    "ensure_ca",
    "ensure_leaf",
    "ensure_tls",
    "issue_certificate",
    "load_ca",
    "new_ca",
    "tls_files",
    "write_key",
]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the stack's PEM files."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def tls_files(directory: Path) -> TlsFiles:
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )


def ensure_tls(directory: Path) -> TlsFiles:
    """Create the CA and a server certificate for 127.0.0.1 and localhost unless they already exist.

    The server certificate is server-only: its key is copied to services that run as other users (PostgreSQL
    reads it), so it must not double as a client identity anywhere. One issued with client auth by an older
    version is re-issued.
    """
    files = tls_files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        ca_cert, ca_key = new_ca("cqox-platform local stack CA")
        write_private_key(files.ca_key, ca_key)
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files.server_cert.unlink(missing_ok=True)
    if files.server_cert.exists() and files.server_key.exists() and not allows_client_auth(files.server_cert):
        return files
    ca_cert, ca_key = load_ca(files.ca_cert, files.ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = issue_certificate(
        ca_cert,
        ca_key,
        server_key.public_key(),
        common_name="localhost",
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
        server=True,
    )
    write_private_key(files.server_key, server_key)
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def allows_client_auth(cert_path: Path) -> bool:
    """Whether the certificate may be presented as a TLS client identity."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no EKU: any usage
    return ExtendedKeyUsageOID.CLIENT_AUTH in usages


def ensure_ca(cert_path: Path, key_path: Path, common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA made once (``new_ca``) and loaded afterwards; the key owner-only."""
    if not (cert_path.exists() and key_path.exists()):
        cert, key = new_ca(common_name)
        write_private_key(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return load_ca(cert_path, key_path)


def ensure_leaf(
    cert_path: Path,
    key_path: Path,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    common_name: str,
    **names_and_usages,
) -> None:
    """Issue a leaf certificate and key signed by ``ca`` unless both files already exist."""
    if cert_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_certificate(*ca, key.public_key(), common_name=common_name, **names_and_usages)
    write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
