"""The database roles behind the platform's two logins.

Vault's database engine issues short-lived users of two kinds:

- **migrator** (Vault role ``cqox-migrator``, setting ``CQOX_PG_VAULT_MIGRATOR_ROLE``): acts as the schema owner
  (the configured owner role, ``cqox_admin`` on the local stack) through membership, so it applies migrations,
  runs pg_partman maintenance, drops expired partitions and refreshes aggregates it owns. Only the database
  assets that need DDL or ownership log in with it (resource ``postgres_migrator``).
- **runtime** (Vault role ``cqox-platform``, setting ``CQOX_PG_VAULT_ROLE``): a member of the NOLOGIN group
  :data:`RUNTIME_GROUP`, which migration ``0011_runtime_role.sql`` gives SELECT/INSERT/UPDATE/DELETE on the CQOX
  tables, USAGE on their sequences, and default privileges so a later migration's tables are covered. It cannot
  create, alter, drop or truncate anything, rewrite the audit trail or the migration history.

This is the split Vault's own PostgreSQL guide recommends: one role per kind of access, each with its own
creation statements, instead of one powerful dynamic user.
"""

from __future__ import annotations

import re

#: The group role that holds the runtime's privileges (created by migration 0010 or by Vault, whichever is first).
RUNTIME_GROUP = "cqox_runtime"

#: Create :data:`RUNTIME_GROUP` if it does not exist (run by Vault before it grants the group to a new user).
ENSURE_RUNTIME_GROUP = f"""DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{RUNTIME_GROUP}') THEN
        CREATE ROLE {RUNTIME_GROUP} NOLOGIN;
    END IF;
END
$$;"""

#: Tables only the migration runner writes: the runtime reads them, never rewrites history.
RUNNER_TABLES = ("schema_migrations", "schema_fingerprint")

#: The roles a migrator login may act as (the schema owner): the platform's own namespace, ``cqox_`` and
#: lowercase letters, digits or ``_`` within PostgreSQL's 63-byte identifier limit. Vault grants that role to
#: every migrator login while running as the database admin, so a name outside it (``postgres``, a ``pg_*``
#: built-in, another application's role) must never get that far.
_OWNER_ROLE = re.compile(r"cqox_[a-z0-9_]{1,58}")


def is_schema_owner_role(name: str) -> bool:
    """Whether ``name`` may be the role migrator logins act as (the runtime's DML group owns nothing)."""
    return bool(_OWNER_ROLE.fullmatch(name)) and name != RUNTIME_GROUP
