"""Repositories of other engines: what the platform reads from their tools' answers and the shipped manifest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cqox_platform.backup.repository.barman_cloud import _barman_time, _store_options
from cqox_platform.backup.repository.base import RepositoryBackup, RepositoryError, run_tool
from cqox_platform.backup.repository.pgbackrest import ARCHIVED_RE
from cqox_platform.backup.verify.gauges import WAL_RPO_SECONDS, for_repository
from cqox_platform.backup.verify.repositories import recovery_window
from cqox_platform.stack.cnpg import manifest_target
from tests.helpers import wal_status


def test_the_shipped_manifest_encrypts_and_compresses_harder_than_gzip():
    target = manifest_target()
    assert target.destination == "s3://cqox-backups-dr/postgres/"
    assert target.server_name == "cqox-postgres-cluster"
    assert (target.wal_encryption, target.data_encryption) == ("AES256", "AES256")
    assert (target.wal_compression, target.data_compression) == ("bzip2", "bzip2")


def test_barman_upload_options_follow_the_manifest():
    assert _store_options("bzip2", "AES256") == ["--bzip2", "--encryption", "AES256"]
    assert _store_options("", "") == []


def test_barman_times_are_read_as_utc():
    assert _barman_time("Fri Dec  4 08:41:46 2026") == datetime(2026, 12, 4, 8, 41, 46, tzinfo=UTC)
    assert _barman_time("2026-12-04T08:41:46+00:00") == datetime(2026, 12, 4, 8, 41, 46, tzinfo=UTC)


@pytest.mark.parametrize(
    ("stored", "name"),
    [
        ("000000010000000000000003-2c0c1d3a6f1f5e8b9a4d7c6e5f4a3b2c1d0e9f8a.zst", "000000010000000000000003"),
        ("000000020000000000000010-2c0c1d3a6f1f5e8b9a4d7c6e5f4a3b2c1d0e9f8a", "000000020000000000000010"),
        ("00000002.history", "00000002.history"),
        ("00000002.history.zst", "00000002.history"),
        ("000000010000000000000002.00000028.backup", None),
        ("archive.info", None),
    ],
)
def test_pgbackrest_archive_names_are_segments_or_histories_only(stored, name):
    match = ARCHIVED_RE.match(stored)
    assert (match and (match.group(1) or match.group(2))) == name or (match is None and name is None)


def test_a_failing_tool_is_named_without_its_secret_options():
    with pytest.raises(RepositoryError) as caught:
        run_tool(["false", "--repo1-s3-key-secret=hunter2"], repository="r")
    assert "repository r: false exited 1" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_missing_tool_says_what_installs_it():
    with pytest.raises(RepositoryError, match="not installed"):
        run_tool(["no-such-barman-tool"], repository="r")


def _backup(backup_id: str, begin_wal: str, end: datetime) -> RepositoryBackup:
    return RepositoryBackup(backup_id, 1, begin_wal, begin_wal, "0/0", end)


def test_the_recovery_window_starts_after_the_last_gap():
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    backups = [
        _backup("a", "000000010000000000000002", now - timedelta(days=2)),
        _backup("b", "000000010000000000000010", now - timedelta(days=1)),
    ]
    whole = recovery_window(backups, wal_status(rpo_seconds=60.0, gaps=[]), now)
    assert whole.start == now - timedelta(days=2) and whole.end == now - timedelta(seconds=60)
    gapped = recovery_window(backups, wal_status(rpo_seconds=60.0, gaps=["000000010000000000000005"]), now)
    assert gapped.start == now - timedelta(days=1)
    unbounded = recovery_window(backups, wal_status(rpo_seconds=None, gaps=[]), now)
    assert unbounded.end is None and unbounded.seconds is None


def test_repository_gauges_keep_their_names_and_add_a_label():
    labelled = for_repository("cnpg", [(WAL_RPO_SECONDS, {"system_id": "7"}, 5.0)])
    assert labelled == [(WAL_RPO_SECONDS, {"system_id": "7", "repository": "cnpg"}, 5.0)]
