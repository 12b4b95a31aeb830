"""SLO incidents: an audit entry for the record (people are paged through Alertmanager, not from here)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def record_incident(conn: psycopg.Connection, slo: str, details: dict[str, Any]) -> None:
    """Write the incident to ``audit_log`` (action ``slo.incident``, resource = the SLO's name)."""
    conn.execute(
        "INSERT INTO audit_log (user_id, action, resource, details) VALUES ('cqox-platform', 'slo.incident', %s, %s)",
        (slo, Jsonb(details)),
    )
