"""Schema drift detection: a fingerprint of the public schema's shape, recorded after each migration.

Checksums prove the files did not change; the fingerprint proves the database did not change behind the
migrations' back (a column added by hand, an index dropped in an incident). Partitions and chunks are left
out: they come and go with maintenance and are not schema.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import psycopg

_OBJECTS_SQL = """
SELECT 'column' AS kind, c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END AS object
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
   AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
UNION ALL
SELECT 'index', i.relname || ' ON ' || t.relname || ': ' || pg_get_indexdef(i.oid)
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public' AND NOT t.relispartition AND t.relkind IN ('r', 'p')
UNION ALL
SELECT 'constraint', t.relname || '.' || c.conname || ': ' || pg_get_constraintdef(c.oid)
  FROM pg_constraint c
  JOIN pg_class t ON t.oid = c.conrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public' AND NOT t.relispartition
ORDER BY 1, 2
"""

_TABLE = """
CREATE TABLE IF NOT EXISTS schema_fingerprint (
    singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint TEXT NOT NULL,
    objects JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Drift:
    """Objects present now but not when the fingerprint was recorded, and the reverse."""

    added: list[str]
    removed: list[str]

    @property
    def clean(self) -> bool:
        return not self.added and not self.removed


def schema_objects(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(_OBJECTS_SQL).fetchall()
    # schema_fingerprint describes itself; leave it out so recording does not change what is recorded.
    return [f"{kind} {obj}" for kind, obj in rows if not obj.startswith("schema_fingerprint")]


def _digest(objects: list[str]) -> str:
    return hashlib.sha256("\n".join(objects).encode()).hexdigest()


def record_fingerprint(conn: psycopg.Connection) -> str:
    conn.execute(_TABLE)
    objects = schema_objects(conn)
    digest = _digest(objects)
    conn.execute(
        "INSERT INTO schema_fingerprint (singleton, fingerprint, objects) VALUES (true, %s, %s) "
        "ON CONFLICT (singleton) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, objects = EXCLUDED.objects, "
        "recorded_at = now()",
        (digest, json.dumps(objects)),
    )
    return digest


def compare_fingerprint(conn: psycopg.Connection) -> Drift | None:
    """Drift against the recorded fingerprint, or None when none was recorded yet."""
    if conn.execute("SELECT to_regclass('public.schema_fingerprint') IS NULL").fetchone()[0]:
        return None
    row = conn.execute("SELECT objects FROM schema_fingerprint").fetchone()
    if row is None:
        return None
    recorded = set(row[0])
    current = set(schema_objects(conn))
    return Drift(added=sorted(current - recorded), removed=sorted(recorded - current))
