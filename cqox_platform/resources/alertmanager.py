"""``AlertmanagerResource``: the Dagster adapter over the core ``AlertmanagerClient`` (``cqox_platform.alerts``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import PrivateAttr

from cqox_platform.alerts.client import AlertmanagerClient
from cqox_platform.alerts.routing import install
from cqox_platform.resources.settings_backed import SettingsBackedResource, path_str, unset
from cqox_platform.settings import Settings, get_settings


class AlertmanagerResource(SettingsBackedResource):
    """Alertmanager's API (TLS, basic auth) and the routing file it loads."""

    url: str = ""
    cacert: str | None = None
    user: str | None = None
    password_file: str | None = None
    config_file: str | None = None

    _client: AlertmanagerClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AlertmanagerResource:
        s = settings or get_settings()
        return cls(
            url=s.alertmanager_url or "",
            cacert=path_str(s.alertmanager_cacert),
            user=s.alertmanager_user,
            password_file=path_str(s.alertmanager_password_file),
            config_file=path_str(s.alertmanager_config_file),
            unset_settings=unset(s, "alertmanager_url", "alertmanager_config_file"),
        )

    def client(self) -> AlertmanagerClient:
        if self._client is None:
            self.require_settings()
            self._client = AlertmanagerClient(self.url, self.cacert, self.user, self.password_file)
        return self._client

    def install_config(self, text: str) -> None:
        self.require_settings()
        install(self.client(), Path(str(self.config_file)), text)
