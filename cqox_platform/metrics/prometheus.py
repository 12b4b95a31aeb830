"""``PrometheusClient``: queries through prometheus-api-client, and rule files loaded with a reload.

Core code (SLO reports, canary analysis, backup checks) takes a ``query`` callable or this client and catches
``PrometheusError`` without importing Dagster; ``PrometheusResource`` is the code location's adapter over it.

Rule files are written atomically into the directory Prometheus reads (``rule_files`` in its config) and
activated by SIGHUP to the PID in Prometheus's PID file: its HTTP lifecycle API stays off, because the same
switch that enables ``/-/reload`` enables ``/-/quit``, which any local process could use to stop all alerting.
A signal needs Prometheus's OS user (or root). The client then waits until Prometheus reports a configuration
load newer than the signal (its own ``prometheus_config_last_reload_*`` metrics) and confirms the groups are loaded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from cqox_platform.errors import CqoxError


class PrometheusError(CqoxError):
    """Prometheus refused a request or is unreachable."""


#: How long a reload may take before the client gives up (Prometheus re-reads every rule file).
RELOAD_TIMEOUT = 60.0
LAST_RELOAD_SUCCESS = "prometheus_config_last_reload_success_timestamp_seconds"
LAST_RELOAD_OK = "prometheus_config_last_reload_successful"


def _unreachable_reason(exc: requests.RequestException, timeout: float) -> str:
    """Why a request got no answer, in a few words ("connection refused", "name does not resolve")."""
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (is the CA right?)"
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:  # the socket error sits a few wrappers down (requests -> urllib3 -> OSError)
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror):
            return f"host name does not resolve ({current.strerror})"
        if isinstance(current, OSError) and current.strerror and not isinstance(current, requests.RequestException):
            return current.strerror[0].lower() + current.strerror[1:]
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        pending += [e for e in linked if isinstance(e, BaseException)]
    return f"connection failed ({type(exc).__name__})"


def _answer(text: str) -> str:
    """Prometheus's own error out of prometheus-api-client's "HTTP Status Code 400 (b'{...}')"."""
    match = re.search(r"HTTP Status Code (\d+)", text)
    error = re.search(r'"error"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
    if match and error:
        return f"HTTP {match.group(1)}: {error.group(1)}"
    return text[:300]


class PrometheusClient:
    """One Prometheus server: ``url``; ``rules_dir`` and ``pid_file`` only for installing rule files."""

    def __init__(
        self, url: str, rules_dir: str | None = None, timeout: float = 30, pid_file: str | Path | None = None
    ) -> None:
        self.url, self.rules_dir, self.timeout = url, rules_dir, timeout
        self.pid_file = Path(pid_file) if pid_file else None
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
            raise self._error(exc, expr) from None

    def query(self, expr: str, at=None) -> list[dict]:
        params = {"time": at} if at is not None else None
        try:
            return self.connect().custom_query(query=expr, params=params)
        except Exception as exc:
            raise self._error(exc, expr) from None

    def _error(self, exc: BaseException, expr: str) -> PrometheusError:
        """``exc`` from a query in words: unreachable and why, or what Prometheus answered. requests' own text
        repeats the request URL with the query URL-encoded, which nobody can read, so it is never shown."""
        shown = f"`{expr[:120]}`" + ("..." if len(expr) > 120 else "")
        if isinstance(exc, requests.RequestException):
            return PrometheusError(
                f"Prometheus at {self.url} unreachable: {_unreachable_reason(exc, self.timeout)} (query {shown})"
            )
        from prometheus_api_client.exceptions import PrometheusApiClientException

        if isinstance(exc, PrometheusApiClientException):
            return PrometheusError(f"Prometheus at {self.url} refused {shown}: {_answer(str(exc))}")
        return PrometheusError(f"Prometheus at {self.url} failed {shown}: {type(exc).__name__}: {exc}")

    def _request(self, method: str, path: str) -> requests.Response:
        try:
            response = requests.request(method, f"{self.url}{path}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusError(
                f"Prometheus at {self.url} unreachable: {_unreachable_reason(exc, self.timeout)} ({method} {path})"
            ) from None
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
        self.reload()
        return sorted(self.rule_groups())

    def _pid(self) -> int:
        """Prometheus's PID from its PID file, checked to be a running ``prometheus`` before anything signals it:
        a stale file whose PID now belongs to another process must not have that process hung up."""
        if self.pid_file is None:
            raise PrometheusError(
                "no Prometheus PID file configured (CQOX_PROMETHEUS_PID_FILE): rule files are loaded by SIGHUP, "
                "since the HTTP lifecycle API stays off. Set it to the file holding Prometheus's PID (the local "
                "stack exports it), or load the rules directory with your deployment's config reloader."
            )
        try:
            pid = int(self.pid_file.read_text().split()[0])
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            raise PrometheusError(
                f"Prometheus's PID file {self.pid_file} names no running process: is Prometheus running "
                "(`cqox-platform stack status`)?"
            ) from None
        if command != "prometheus":
            raise PrometheusError(
                f"PID {pid} from {self.pid_file} is {command!r}, not prometheus: the file is stale; restart "
                "Prometheus (`cqox-platform stack up`) so it names the running server."
            )
        return pid

    def _last_load(self) -> tuple[float, bool]:
        """When Prometheus last loaded its configuration successfully (unix seconds, sub-second precision: the
        runtime info's ``lastConfigTime`` has whole seconds, too coarse for two reloads in a row) and whether its
        latest attempt succeeded, from its own metrics."""
        values: dict[str, float] = {}
        for line in self._request("GET", "/metrics").text.splitlines():
            name, _, value = line.partition(" ")
            if name in (LAST_RELOAD_SUCCESS, LAST_RELOAD_OK):
                values[name] = float(value)
        if len(values) != 2:
            raise PrometheusError(
                f"Prometheus at {self.url} does not expose {LAST_RELOAD_SUCCESS} and {LAST_RELOAD_OK}: "
                "cannot tell whether a reload happened."
            )
        return values[LAST_RELOAD_SUCCESS], values[LAST_RELOAD_OK] == 1

    def reload(self) -> None:
        """SIGHUP to Prometheus; returns once it has loaded its configuration and rule files again. A load it
        refused (a bad rule file) raises naming its log, where Prometheus says why."""
        pid = self._pid()
        before, ok_before = self._last_load()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            when, ok = self._last_load()
            if when > before and ok:
                return
            if ok_before and not ok:  # (after an earlier failed load only the timeout can tell)
                raise PrometheusError(
                    f"Prometheus at {self.url} refused to reload after SIGHUP ({LAST_RELOAD_OK} 0): a rule "
                    "file or its configuration is invalid; its log says which (`cqox-platform stack status` "
                    "names the log file)."
                )
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"Prometheus at {self.url} did not report a new configuration load within "
                    f"{RELOAD_TIMEOUT:.0f} s of SIGHUP to PID {pid}; look at its log."
                )
            time.sleep(0.2)
