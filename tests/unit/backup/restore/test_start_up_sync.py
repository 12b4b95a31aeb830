"""A restored server that logged a failed sync of its data directory at start-up is not a good copy.

PostgreSQL logs a failure of SyncDataDirectory (``recovery_init_sync_method`` syncfs or fsync) and goes on;
nothing later syncs the restored files again. The restore, the drills and the site-loss drill wait on the server
through ``ScratchCluster``, which now fails on such a line instead of reporting the copy good. A failing disk
cannot be made here, so the server's log lines (PostgreSQL 15's fd.c wording) are written by the test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cqox_platform.pgserver import SHUTDOWN_AT_TARGET, PgServerError, ScratchCluster

SYNCFS_FAILED = (
    '2026-12-04 10:00:00.123 UTC [4242] LOG:  could not synchronize file system for file "pg_wal": Input/output error'
)
FSYNC_FAILED = '2026-12-04 10:00:00.123 UTC [4242] LOG:  could not fsync file "base/5/16384": Input/output error'


def _cluster(tmp_path: Path, *lines: str) -> ScratchCluster:
    (tmp_path / "pgdata").mkdir()
    log = tmp_path / "server.log"
    log.write_text("".join(f"{line}\n" for line in lines))
    return ScratchCluster(tmp_path / "pgdata", tmp_path / "sock", 5999, log, tmp_path / "bin")


@pytest.mark.parametrize("failure", [SYNCFS_FAILED, FSYNC_FAILED], ids=["syncfs", "fsync"])
def test_a_logged_start_up_sync_failure_fails_the_restore_naming_the_line_and_what_to_do(
    tmp_path: Path, failure: str
) -> None:
    cluster = _cluster(tmp_path, "LOG:  starting archive recovery", failure, "LOG:  redo starts at 0/2000028")
    with pytest.raises(PgServerError) as refused:
        cluster.check_start_up_sync()
    message = str(refused.value)
    assert failure.split("LOG:  ", 1)[1] in message and "restore again" in message, message


def test_a_clean_start_up_passes(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "LOG:  starting archive recovery", "LOG:  redo starts at 0/2000028")
    assert cluster.check_start_up_sync() is None


def test_a_server_that_shut_down_at_its_target_after_a_failed_sync_is_not_reported_good(tmp_path: Path) -> None:
    """The wait itself fails: every caller (restore, drills) gets the refusal, not a copy to trust."""
    cluster = _cluster(tmp_path, SYNCFS_FAILED, f"LOG:  {SHUTDOWN_AT_TARGET}")
    with pytest.raises(PgServerError, match="could not sync the restored files"):
        cluster.wait_shut_down_at_target(5, lambda _m: None)
