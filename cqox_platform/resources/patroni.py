"""``PatroniResource``: the REST API of the stack's Patroni cluster, configured from ``CQOX_PATRONI_*``.

The code location also serves single-node stacks, where ``stack env`` exports no ``CQOX_PATRONI_*``: the
resource then stays unconfigured (empty fields rather than unset ``EnvVar``s, which would fail every run
that binds it), ``configured`` is False, and ``client()`` raises ``NoPatroniClusterError`` with what to do.
Only the path of the REST password file is configuration; the password is read from it per request.
"""

from __future__ import annotations

import os

import dagster as dg

from cqox_platform.ha.patroni_client import TIMEOUT, PatroniClient, PatroniError

NO_CLUSTER_MESSAGE = "this stack has no Patroni cluster (start it with `stack up --ha`)"


class NoPatroniClusterError(PatroniError):
    """The platform runs against a single PostgreSQL node: there is no Patroni cluster to ask."""


def _env_or_empty(name: str) -> str | dg.EnvVar:
    return dg.EnvVar(name) if os.environ.get(name) else ""


class PatroniResource(dg.ConfigurableResource):
    """Patroni's REST endpoints (comma-separated), verified against ``cacert``, writes as ``username``."""

    urls: str = ""
    cacert: str = ""
    username: str = ""
    #: File holding the REST password (read at call time, never kept in config or logs).
    password_file: str = ""
    timeout: float = TIMEOUT

    @classmethod
    def from_env(cls) -> PatroniResource:
        """``CQOX_PATRONI_URLS``, ``_CACERT``, ``_USER``, ``_PASSWORD_FILE`` as `stack env` exports them."""
        return cls(
            urls=_env_or_empty("CQOX_PATRONI_URLS"),
            cacert=_env_or_empty("CQOX_PATRONI_CACERT"),
            username=_env_or_empty("CQOX_PATRONI_USER"),
            password_file=_env_or_empty("CQOX_PATRONI_PASSWORD_FILE"),
        )

    @property
    def url_list(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.urls.split(",") if u.strip()]

    @property
    def configured(self) -> bool:
        return bool(self.url_list)

    def client(self) -> PatroniClient:
        if not self.configured:
            raise NoPatroniClusterError(f"{NO_CLUSTER_MESSAGE}: CQOX_PATRONI_URLS is not set.")
        if not self.cacert:
            # requests treats an empty `verify` as "do not verify": never talk to Patroni like that.
            raise PatroniError("CQOX_PATRONI_CACERT is not set: Patroni's certificate could not be verified.")
        return PatroniClient(
            urls=self.url_list,
            cacert=self.cacert,
            username=self.username or None,
            password_file=self.password_file or None,
            timeout=self.timeout,
        )
