"""``PrometheusResource``: the Dagster adapter over the core ``PrometheusClient`` (``cqox_platform.metrics``)."""

from __future__ import annotations

from pydantic import PrivateAttr

from cqox_platform.metrics.prometheus import PrometheusClient, PrometheusError
from cqox_platform.resources.settings_backed import SettingsBackedResource, path_str, unset
from cqox_platform.settings import Settings, get_settings

__all__ = ["PrometheusError", "PrometheusResource"]


class PrometheusResource(SettingsBackedResource):
    url: str = ""
    rules_dir: str | None = None
    #: Prometheus's PID file: installed rule files are loaded by SIGHUP to it.
    pid_file: str | None = None
    timeout: int = 30

    _client: PrometheusClient | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PrometheusResource:
        s = settings or get_settings()
        return cls(
            url=s.prometheus_url or "",
            rules_dir=path_str(s.prometheus_rules_dir),
            pid_file=path_str(s.prometheus_pid_file),
            unset_settings=unset(s, "prometheus_url"),
        )

    def client(self) -> PrometheusClient:
        if self._client is None:
            self.require_settings()
            self._client = PrometheusClient(self.url, self.rules_dir, self.timeout, pid_file=self.pid_file)
        return self._client

    def query_range(self, expr: str, start, end, step: str) -> list[dict]:
        return self.client().query_range(expr, start, end, step)

    def query(self, expr: str, at=None) -> list[dict]:
        return self.client().query(expr, at)

    def rule_groups(self) -> dict[str, dict]:
        return self.client().rule_groups()

    def install_rules(self, filename: str, text: str) -> list[str]:
        return self.client().install_rules(filename, text)
