"""SLO incidents: an audit entry for the record and a webhook notification for the people on call."""

from __future__ import annotations

from typing import Any

import psycopg
import requests
from psycopg.types.json import Jsonb

from cqox_platform.errors import CqoxError


def record_incident(conn: psycopg.Connection, slo: str, details: dict[str, Any]) -> None:
    """Write the incident to ``audit_log`` (action ``slo.incident``, resource = the SLO's name)."""
    conn.execute(
        "INSERT INTO audit_log (user_id, action, resource, details) VALUES ('cqox-platform', 'slo.incident', %s, %s)",
        (slo, Jsonb(details)),
    )


def notify_webhook(url: str, slo: str, severity: str, details: dict[str, Any], timeout: float = 10) -> int:
    """POST a JSON notification (Slack-style ``text`` plus the details); returns the HTTP status."""
    payload = {"text": f"SLO {slo} burning its error budget ({severity})", **details}
    try:
        response = requests.post(url, json=payload, timeout=timeout)
    except requests.RequestException as exc:
        raise CqoxError(f"the SLO webhook {url.split('?')[0]} is unreachable ({type(exc).__name__}).") from None
    if response.status_code >= 300:
        raise CqoxError(f"the SLO webhook {url.split('?')[0]} answered HTTP {response.status_code}.")
    return response.status_code
