"""Transport security probes: does an endpoint speak only TLS 1.3, with a certificate that verifies?

Each probe makes two handshakes with Python's ``ssl``: one verified against the configured CA (records the
protocol and the certificate's expiry), and one capped at TLS 1.2 that must be refused. PostgreSQL negotiates
TLS inside its own protocol, so its probe sends the SSLRequest message first.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime

_PG_SSL_REQUEST = struct.pack(">ii", 8, 80877103)


@dataclass(frozen=True)
class TlsProbe:
    """What one endpoint presented."""

    name: str
    address: str
    protocol: str | None
    verified: bool
    accepts_below_tls13: bool
    cert_not_after: datetime | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.verified and self.protocol == "TLSv1.3" and not self.accepts_below_tls13

    @property
    def days_left(self) -> float | None:
        if self.cert_not_after is None:
            return None
        return (self.cert_not_after - datetime.now(UTC)).total_seconds() / 86400


def _connect(host: str, port: int, postgres: bool, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    if postgres:
        sock.sendall(_PG_SSL_REQUEST)
        answer = sock.recv(1)
        if answer != b"S":
            sock.close()
            raise ssl.SSLError(f"PostgreSQL refused TLS (answered {answer!r} to SSLRequest)")
    return sock


def _handshake(host: str, port: int, context: ssl.SSLContext, postgres: bool, timeout: float) -> ssl.SSLSocket:
    sock = _connect(host, port, postgres, timeout)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def probe_tls(
    name: str, host: str, port: int, cafile: str | None, *, postgres: bool = False, timeout: float = 5.0
) -> TlsProbe:
    """Probe ``host:port``; never raises for a failing endpoint, the result says what failed."""
    address = f"{host}:{port}"
    verified_ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    protocol = not_after = None
    verified, error = False, None
    try:
        with _handshake(host, port, verified_ctx, postgres, timeout) as tls:
            protocol = tls.version()
            cert = tls.getpeercert() or {}
            verified = True
            if "notAfter" in cert:
                not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC)
    except ssl.SSLCertVerificationError as exc:
        error = f"certificate does not verify: {exc.verify_message}"
    except (OSError, ssl.SSLError) as exc:
        error = f"TLS handshake failed: {exc}"

    legacy_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy_ctx.check_hostname = False
    legacy_ctx.verify_mode = ssl.CERT_NONE  # only asking which versions the server agrees to
    with warnings.catch_warnings():  # TLS 1.0 is deprecated, which is exactly why we ask for it
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy_ctx.minimum_version = ssl.TLSVersion.TLSv1
    legacy_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with contextlib.suppress(ssl.SSLError):
        legacy_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    accepts_legacy = False
    try:
        with _handshake(host, port, legacy_ctx, postgres, timeout):
            accepts_legacy = True
    except (OSError, ssl.SSLError):
        accepts_legacy = False
    return TlsProbe(name, address, protocol, verified, accepts_legacy, not_after, error)
