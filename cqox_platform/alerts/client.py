"""``AlertmanagerClient``: Alertmanager's HTTP API (v2) and lifecycle reload; ``ReceiverClient`` for the local
receiver. Plain Python: the asset, the CLI and the tests share them.

Silences go through ``/api/v2/silences`` (what ``amtool silence`` does), so an operator needs no amtool and the
same code works against a production Alertmanager behind TLS and basic auth.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from cqox_platform.errors import AlertingError


class AlertmanagerError(AlertingError):
    """Alertmanager (or the local receiver) refused a request or is unreachable."""


@dataclass(frozen=True)
class Matcher:
    """``name=value`` (or ``name=~regex``, ``name!=value``) as Alertmanager's API takes it."""

    name: str
    value: str
    is_regex: bool = False
    is_equal: bool = True

    @classmethod
    def parse(cls, text: str) -> Matcher:
        for op, regex, equal in (("=~", True, True), ("!~", True, False), ("!=", False, False), ("=", False, True)):
            if op in text:
                name, value = text.split(op, 1)
                if name.strip():
                    return cls(name.strip(), value.strip().strip('"'), regex, equal)
        raise AlertmanagerError(f"matcher {text!r} is not name=value, name!=value, name=~regex or name!~regex.")

    def api(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "isRegex": self.is_regex, "isEqual": self.is_equal}


class AlertmanagerClient:
    def __init__(
        self,
        url: str,
        cacert: str | None = None,
        user: str | None = None,
        password_file: str | None = None,
        timeout: float = 15,
    ) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self._verify: str | bool = cacert or True
        self._auth = (user, Path(password_file).read_text().strip()) if user and password_file else None

    def __repr__(self) -> str:
        return f"AlertmanagerClient({self.url!r})"

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = requests.request(
                method, f"{self.url}{path}", auth=self._auth, verify=self._verify, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise AlertmanagerError(f"Alertmanager at {self.url} is unreachable ({type(exc).__name__}).") from None
        if response.status_code >= 400:
            raise AlertmanagerError(
                f"Alertmanager at {self.url} answered {response.status_code} to {method} {path}: {response.text[:300]}"
            )
        return response

    def reload(self) -> None:
        """``POST /-/reload``: Alertmanager re-reads its routing file; a file it rejects answers 500 here."""
        self._request("POST", "/-/reload")

    def status(self) -> dict[str, Any]:
        return self._request("GET", "/api/v2/status").json()

    def alerts(self, filter: list[str] | None = None) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, with their state (``silencedBy``, ``inhibitedBy``); ``filter``: matchers."""
        return self._request("GET", "/api/v2/alerts", params={"filter": filter or []}).json()

    def alert_groups(self, filter: list[str] | None = None) -> list[dict[str, Any]]:
        """Aggregation groups (one notification each) with their alerts, as ``/api/v2/alerts/groups`` gives them."""
        return self._request("GET", "/api/v2/alerts/groups", params={"filter": filter or []}).json()

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        self._request("POST", "/api/v2/alerts", json=alerts)

    def add_silence(
        self, matchers: list[Matcher], duration: timedelta, comment: str, author: str, start: datetime | None = None
    ) -> str:
        if not matchers:
            raise AlertmanagerError("a silence needs at least one matcher (it would silence everything).")
        if duration <= timedelta(0):
            raise AlertmanagerError("a silence needs a positive duration.")
        begin = start or datetime.now(UTC)
        body = {
            "matchers": [m.api() for m in matchers],
            "startsAt": begin.isoformat(),
            "endsAt": (begin + duration).isoformat(),
            "createdBy": author,
            "comment": comment,
        }
        return self._request("POST", "/api/v2/silences", json=body).json()["silenceID"]

    def expire_silence(self, silence_id: str) -> None:
        self._request("DELETE", f"/api/v2/silence/{silence_id}")

    def silences(self, state: str | None = None) -> list[dict[str, Any]]:
        found = self._request("GET", "/api/v2/silences").json()
        return [s for s in found if state is None or s["status"]["state"] == state]


class ReceiverClient:
    """The local stack's receiver: what would have paged (``GET /v1/received``)."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = requests.get(f"{self.url}{path}", params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AlertmanagerError(
                f"the alert receiver at {self.url} is unreachable ({type(exc).__name__})."
            ) from None
        if response.status_code != 200:
            raise AlertmanagerError(f"the alert receiver at {self.url} answered {response.status_code} to {path}.")
        return response.json()

    def received(self, since: float = 0.0) -> list[dict[str, Any]]:
        return self._get("/v1/received", since=since)

    def heartbeats(self) -> dict[str, dict[str, Any]]:
        """The dead man's switches the receiver watches: last heard (unix time), allowance, whether paging."""
        return self._get("/v1/heartbeats")
