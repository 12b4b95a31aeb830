"""``PrometheusClient``: queries through prometheus-api-client, and rule files loaded with a reload.

Core code (SLO reports, canary analysis, backup checks) takes a ``query`` callable or this client and catches
``PrometheusError`` without importing Dagster; ``PrometheusResource`` is the code location's adapter over it.

Rule files are written atomically into the directory Prometheus reads (``rule_files`` in its config) and
activated through the lifecycle API (``POST /-/reload``); the client then confirms the groups are loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import requests

from cqox_platform.errors import CqoxError


class PrometheusError(CqoxError):
    """Prometheus refused a request or is unreachable."""


class PrometheusClient:
    """One Prometheus server: ``url``; ``rules_dir`` only for installing rule files."""

    def __init__(self, url: str, rules_dir: str | None = None, timeout: float = 30) -> None:
        self.url, self.rules_dir, self.timeout = url, rules_dir, timeout
        self._connect: Any = None

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    def connect(self) -> Any:
        """The prometheus-api-client connection (imported on first use: commands that never query skip ~50 ms)."""
        if self._connect is None:
            from prometheus_api_client import PrometheusConnect

            self._connect = PrometheusConnect(url=self.url, disable_ssl=False)
        return self._connect

    def query_range(self, expr: str, start, end, step: str) -> list[dict]:
        """One range query; an unreachable server or a bad expression raises ``PrometheusError``."""
        try:
            return self.connect().custom_query_range(query=expr, start_time=start, end_time=end, step=step)
        except Exception as exc:  # the client raises its own types and requests' ones
            raise PrometheusError(f"Prometheus at {self.url} failed `{expr[:120]}`: {exc}") from None

    def query(self, expr: str, at=None) -> list[dict]:
        params = {"time": at} if at is not None else None
        try:
            return self.connect().custom_query(query=expr, params=params)
        except Exception as exc:
            raise PrometheusError(f"Prometheus at {self.url} failed `{expr[:120]}`: {exc}") from None

    def _request(self, method: str, path: str) -> requests.Response:
        try:
            response = requests.request(method, f"{self.url}{path}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}).") from None
        if response.status_code >= 400:
            raise PrometheusError(
                f"Prometheus at {self.url} answered {response.status_code} to {method} {path}: {response.text[:300]}"
            )
        return response

    def loaded_config(self) -> dict[str, Any]:
        """The configuration Prometheus runs with (``/api/v1/status/config``), defaults filled in."""
        import yaml

        return yaml.safe_load(self._request("GET", "/api/v1/status/config").json()["data"]["yaml"])

    def rule_groups(self) -> dict[str, dict]:
        data = self._request("GET", "/api/v1/rules").json()["data"]["groups"]
        return {g["name"]: g for g in data}

    def install_rules(self, filename: str, text: str) -> list[str]:
        """Write ``text`` as ``rules_dir/filename``, reload Prometheus, return the loaded group names."""
        if not self.rules_dir:
            raise PrometheusError("no rules_dir configured (CQOX_PROMETHEUS_RULES_DIR).")
        directory = Path(self.rules_dir)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", dir=directory)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, directory / filename)
        self._request("POST", "/-/reload")
        return sorted(self.rule_groups())
