"""The migration runner: ``sql/`` applied in order, once, each file atomically, under an advisory lock.

Why not Alembic or Flyway: the schema is hand-written SQL with two dialects chosen at run time, and the
guarantees we need are few and strict — a released file never changes (checksums), two runners never
interleave (advisory lock), a broken file changes nothing (one transaction per file).
"""

from __future__ import annotations

import getpass
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from cqox_platform.db.roles import RUNNER_TABLES, RUNTIME_GROUP
from cqox_platform.errors import MigrationChecksumError, MigrationError, MigrationFailedError
from cqox_platform.package_data import package_path
from cqox_platform.schema.dialect import Dialect, detect_dialect
from cqox_platform.schema.fingerprint import record_fingerprint

#: The migrations: the repository's top-level ``sql/``, shipped as the data package ``cqox_platform.schema.sql``.
SQL_DIR = package_path("cqox_platform.schema.sql")

#: Key of the session-level advisory lock that serialises runners ("cqox" in ASCII, then 1).
LOCK_KEY = 0x63716F7801

_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<dialect>plain|timescaledb))?\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    filename TEXT NOT NULL,
    checksum TEXT NOT NULL,
    dialect TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_by TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    """One file of ``sql/`` as it applies to one dialect."""

    version: int
    name: str
    path: Path
    checksum: str

    @property
    def filename(self) -> str:
        return self.path.name

    def read(self) -> str:
        return self.path.read_text()


@dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    filename: str
    checksum: str
    dialect: str
    duration_ms: int


@dataclass
class MigrationReport:
    """What one ``migrate`` call found and did."""

    dialect: Dialect
    applied: list[AppliedMigration] = field(default_factory=list)
    already_applied: list[AppliedMigration] = field(default_factory=list)
    waited_for_lock_s: float = 0.0

    @property
    def current_version(self) -> int:
        versions = [m.version for m in self.applied + self.already_applied]
        return max(versions, default=0)


def discover(sql_dir: Path, dialect: Dialect) -> list[Migration]:
    """The migrations for ``dialect`` in version order; a version's dialect file wins over its common file."""
    if not sql_dir.is_dir():
        raise MigrationError(f"migration directory {sql_dir} does not exist.")
    by_version: dict[int, dict[str | None, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: not a migration name; use NNNN_name.sql or NNNN_name.(plain|timescaledb).sql."
            )
        version = int(match["version"])
        if names.setdefault(version, match["name"]) != match["name"]:
            raise MigrationError(f"{path}: version {version} is already used by `{names[version]}`.")
        by_version.setdefault(version, {})[match["dialect"]] = path
    migrations = []
    for version in sorted(by_version):
        variants = by_version[version]
        path = variants.get(dialect.value) or variants.get(None)
        if path is None:
            others = ", ".join(p.name for p in variants.values())
            raise MigrationError(
                f"migration {version:04d} has no file for the {dialect.value} dialect (only {others}); add "
                f"{version:04d}_{names[version]}.{dialect.value}.sql or a common file."
            )
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        migrations.append(Migration(version, names[version], path, checksum))
    return migrations


class MigrationRunner:
    """Applies ``sql/`` to one database. Use a dedicated connection: the runner switches it to autocommit."""

    def __init__(self, sql_dir: Path = SQL_DIR, dialect: Dialect | None = None) -> None:
        self.sql_dir = sql_dir
        self.dialect = dialect

    def resolve_dialect(self, conn: psycopg.Connection) -> Dialect:
        """The dialect the database was migrated with, else the one the server supports."""
        if self.dialect is not None:
            return self.dialect
        if _table_exists(conn, "schema_migrations"):
            row = conn.execute("SELECT dialect FROM schema_migrations ORDER BY version LIMIT 1").fetchone()
            if row:
                return Dialect(row[0])
        return detect_dialect(conn)

    def applied(self, conn: psycopg.Connection) -> list[AppliedMigration]:
        if not _table_exists(conn, "schema_migrations"):
            return []
        rows = conn.execute(
            "SELECT version, name, filename, checksum, dialect, duration_ms FROM schema_migrations ORDER BY version"
        ).fetchall()
        return [AppliedMigration(*row) for row in rows]

    def verify(self, conn: psycopg.Connection) -> tuple[Dialect, list[Migration], list[AppliedMigration]]:
        """Check applied history against the files; return (dialect, pending, applied). Raises on any mismatch."""
        dialect = self.resolve_dialect(conn)
        files = {m.version: m for m in discover(self.sql_dir, dialect)}
        applied = self.applied(conn)
        for record in applied:
            if record.dialect != dialect.value:
                raise MigrationError(
                    f"migration {record.filename} was applied with the {record.dialect} dialect but this run "
                    f"uses {dialect.value}; a database keeps the dialect it was created with."
                )
            current = files.get(record.version)
            if current is None:
                raise MigrationError(
                    f"migration {record.filename} (version {record.version}) is applied in the database but "
                    f"missing from {self.sql_dir}; the code is older than the database."
                )
            if current.checksum != record.checksum:
                raise MigrationChecksumError(
                    f"{current.path} was changed after it was applied (checksum {record.checksum[:12]} in "
                    f"schema_migrations, {current.checksum[:12]} on disk). Released migrations are never "
                    f"edited: restore the file and add a new migration instead."
                )
        done = {r.version for r in applied}
        pending = [m for v, m in sorted(files.items()) if v not in done]
        return dialect, pending, applied

    def migrate(self, conn: psycopg.Connection, progress: Callable[[str], None] = lambda _msg: None) -> MigrationReport:
        """Apply every pending file, each in its own transaction, holding the advisory lock throughout."""
        conn.autocommit = True
        started = time.monotonic()
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        waited = time.monotonic() - started
        try:
            conn.execute(_BOOTSTRAP)
            dialect, pending, applied = self.verify(conn)
            report = MigrationReport(dialect=dialect, already_applied=applied, waited_for_lock_s=waited)
            for migration in pending:
                progress(f"applying {migration.filename}")
                report.applied.append(self._apply(conn, migration, dialect))
            if report.applied or not _table_exists(conn, "schema_fingerprint"):
                record_fingerprint(conn)
            _runner_tables_read_only(conn)
            return report
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))

    def _apply(self, conn: psycopg.Connection, migration: Migration, dialect: Dialect) -> AppliedMigration:
        started = time.monotonic()
        try:
            with conn.transaction():
                conn.execute(sql.SQL(migration.read()))  # type: ignore[arg-type] - a trusted repository file
                duration_ms = int((time.monotonic() - started) * 1000)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, filename, checksum, dialect, applied_by,"
                    " duration_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        migration.version,
                        migration.name,
                        migration.filename,
                        migration.checksum,
                        dialect.value,
                        _who(),
                        duration_ms,
                    ),
                )
        except psycopg.Error as exc:
            diag = exc.diag
            where = f" at character {diag.statement_position}" if diag.statement_position else ""
            raise MigrationFailedError(
                f"{migration.path} failed{where}: {diag.message_primary or exc}. The file's transaction was "
                f"rolled back; nothing it did remains. Fix the file (it was never applied) and run again."
            ) from None
        return AppliedMigration(
            migration.version, migration.name, migration.filename, migration.checksum, dialect.value, duration_ms
        )


def _runner_tables_read_only(conn: psycopg.Connection) -> None:
    """The runtime reads the migration history and fingerprint but cannot forge them (default privileges of
    migration 0010 would otherwise let it write ``schema_fingerprint``, created after the migrations)."""
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (RUNTIME_GROUP,)).fetchone():
        return  # a database migrated before 0010 existed has no runtime role yet
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in RUNNER_TABLES if _table_exists(conn, t))
    role = sql.Identifier(RUNTIME_GROUP)
    conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tables, role))
    conn.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(tables, role))


def _table_exists(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()
    return bool(row and row[0])


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
