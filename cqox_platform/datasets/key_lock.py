"""The lock that serialises a Transit key's rotation with the ingests that take data keys from it.

An ingest holds it shared from the moment it asks Vault for a data key until its row is committed, so any
number of ingests run together; a rotation holds it exclusively from ``rotate`` to ``min_decryption_version``.
So a rotation never scans rows while a DEK from the old version is on its way to the table, and no ingest takes
a DEK while rotation is rewrapping. It is PostgreSQL's readers-writer advisory lock on the session (the ingest's
work between key and row is S3 uploads, not one transaction), released in ``finally`` and by PostgreSQL when
the session ends, so a crashed holder never blocks for longer than its connection lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

#: First half of the two-key advisory lock ("cqox" in ASCII + 6); the second half is hashtext(key name).
LOCK_CLASS = 0x63716F06


@contextmanager
def transit_key_lock(conn: psycopg.Connection, key_name: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the key's rotation lock on ``conn`` (autocommit) for the block: exclusive to rotate, shared to key."""
    mode = "" if exclusive else "_shared"
    conn.execute(f"SELECT pg_advisory_lock{mode}(%s, hashtext(%s))", (LOCK_CLASS, key_name))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(f"SELECT pg_advisory_unlock{mode}(%s, hashtext(%s))", (LOCK_CLASS, key_name))
