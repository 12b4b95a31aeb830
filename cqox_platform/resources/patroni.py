"""``PatroniResource``: the Dagster adapter over the core ``PatroniClient``, configured from the settings.

The code location also serves single-node stacks, where ``stack env`` exports no ``CQOX_PATRONI_*``: the
resource then stays unconfigured (empty fields), ``configured`` is False, and ``client()`` raises
``NoPatroniClusterError`` with what to do. Only the path of the REST password file is configuration; the
password is read from it per request.
"""

from __future__ import annotations

import dagster as dg

from cqox_platform.ha.patroni_client import (  # noqa: F401 - re-exported for the asset and sensor
    NO_CLUSTER_MESSAGE,
    TIMEOUT,
    NoPatroniClusterError,
    PatroniClient,
    connect_patroni,
    url_list,
)
from cqox_platform.settings import Settings, get_settings


class PatroniResource(dg.ConfigurableResource):
    """Patroni's REST endpoints (comma-separated), verified against ``cacert``, writes as ``username``."""

    urls: str = ""
    cacert: str = ""
    username: str = ""
    #: File holding the REST password (read at call time, never kept in config or logs).
    password_file: str = ""
    timeout: float = TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PatroniResource:
        """``CQOX_PATRONI_URLS``, ``_CACERT``, ``_USER``, ``_PASSWORD_FILE`` as `stack env` exports them."""
        s = settings or get_settings()
        return cls(
            urls=s.patroni_urls or "",
            cacert=str(s.patroni_cacert or ""),
            username=s.patroni_user or "",
            password_file=str(s.patroni_password_file or ""),
        )

    @property
    def url_list(self) -> list[str]:
        return url_list(self.urls)

    @property
    def configured(self) -> bool:
        return bool(self.url_list)

    def client(self) -> PatroniClient:
        return connect_patroni(self.urls, self.cacert, self.username, self.password_file, self.timeout)
