"""Tab completes the ids an operator would otherwise copy from another command: backup ids after
``restore --backup`` and rollout ids after ``canary abort`` (and the other rollout actions), read from the stack's
PostgreSQL through the console script, as a shell calls it. A stack that cannot be reached completes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from cqox_platform.schema import MigrationRunner
from tests.helpers import postgres_admin

SCRIPT = Path(sys.executable).parent / "cqox-platform"


def _complete(env: dict[str, str], words: str) -> list[str]:
    result = subprocess.run(
        [str(SCRIPT)],
        env={
            **os.environ,
            **env,
            "_CQOX_PLATFORM_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split(" ")) - 1),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]  # nothing to offer: one blank line


@pytest.fixture
def ids(stack):
    """A backup row and a rollout row with ids no other test uses, removed afterwards."""
    backup_id, rollout_id = f"29991231T{uuid.uuid4().int % 10**6:06d}Z", f"cqox-engine-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True) as conn:
        MigrationRunner().migrate(conn)
        conn.execute(
            "INSERT INTO backups (backup_id, system_id, bucket, label, timeline, start_lsn, stop_lsn, start_wal, "
            "stop_wal, start_time, stop_time, database_bytes, compressed_bytes, stored_bytes, duration_seconds, "
            "throughput_mib_s, key_name, key_version, object_key, pg_version, record) VALUES (%s, '1', 'b', %s, 1, "
            "'0/2000028', '0/2000100', '000000010000000000000002', '000000010000000000000002', now(), now(), 1, 1, "
            "1, 1, 1, 'cqox-backups', 1, 'k', '15', '{}')",
            (backup_id, backup_id),
        )
        conn.execute(
            "INSERT INTO canary_rollouts (rollout_id, service, image, policy_version, weight, status) "
            "VALUES (%s, 'cqox-engine', 'img', 1, 0, 'rolled_back')",
            (rollout_id,),
        )
    yield backup_id, rollout_id
    with psycopg.connect(**postgres_admin(stack).conninfo(), autocommit=True) as conn:
        conn.execute("DELETE FROM backups WHERE backup_id = %s", (backup_id,))
        conn.execute("DELETE FROM canary_rollouts WHERE rollout_id = %s", (rollout_id,))


def test_tab_completes_backup_ids_after_restore_backup_and_rollout_ids_after_a_rollout_action(stack, ids):
    backup_id, rollout_id = ids
    env = stack.env()
    assert backup_id in _complete(env, "cqox-platform restore --backup 2999")
    assert _complete(env, f"cqox-platform restore --backup {backup_id[:-1]}") == [backup_id]
    assert rollout_id in _complete(env, "cqox-platform canary abort cqox-engine-")
    assert _complete(env, "cqox-platform canary resume no-such-") == []


def test_an_unreachable_database_completes_nothing_and_prints_nothing(stack, ids):
    env = {**stack.env(), "CQOX_PG_PORT": "1"}
    assert _complete(env, "cqox-platform restore --backup 2999") == []
