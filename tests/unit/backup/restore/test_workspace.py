"""The restore's input checks on its recovery target, and the choice of a backup when none is named.

Every bad target is refused before anything is downloaded or created: the last tests run ``restore_backup``
with an S3 client that fails the test if it is touched and check that PGDATA was never made.
"""

from __future__ import annotations

import dataclasses
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from cqox_platform.backup.archive.store import ArchiveClients
from cqox_platform.backup.restore.recovery import RecoveryTarget
from cqox_platform.backup.restore.workspace import (
    BackupCatalog,
    RestoreInputError,
    RestoreRequest,
    check_target_after_backup,
    check_xid_status,
    choose_backup,
    recovery_target,
    restore_backup,
)
from tests.helpers import BACKUP_STOPPED, backup_record, make_world_traversable_tmpdir


def _backup(backup_id: str, *, hours: int, stop_lsn: str, timeline: int = 1):
    """``backup_record`` ending ``hours`` after BACKUP_STOPPED at ``stop_lsn``."""
    stopped = BACKUP_STOPPED + timedelta(hours=hours)
    return dataclasses.replace(
        backup_record(backup_id), stop_time=stopped.isoformat(), stop_lsn=stop_lsn, timeline=timeline
    )


B1 = _backup("20260301T030000Z", hours=0, stop_lsn="0/2000100")
B2 = _backup("20260301T040000Z", hours=1, stop_lsn="0/5000100")
B3 = _backup("20260301T050000Z", hours=2, stop_lsn="0/9000100")


def _catalog(*verified: str) -> BackupCatalog:
    return BackupCatalog([B1, B2, B3], set(verified), "s3://b/postgres/7/base/")


def _at(hours: float) -> str:
    return (BACKUP_STOPPED + timedelta(hours=hours)).isoformat(sep=" ")


# --- the target's form ----------------------------------------------------------------------------------------


def test_each_target_becomes_its_postgresql_settings_inclusive_with_action_and_timeline():
    lsn = recovery_target(lsn="16/b374d848", action="pause", timeline="current")
    assert lsn.settings() == {
        "recovery_target_lsn": "16/B374D848",
        "recovery_target_inclusive": "on",
        "recovery_target_action": "pause",
        "recovery_target_timeline": "current",
    }
    xid = recovery_target(xid="73110", action="shutdown", timeline="2")
    assert xid.settings()["recovery_target_xid"] == "73110"
    assert xid.settings()["recovery_target_inclusive"] == "on"
    assert xid.settings()["recovery_target_action"] == "shutdown"
    assert xid.settings()["recovery_target_timeline"] == "2"
    assert recovery_target(immediate=True).settings()["recovery_target"] == "immediate"
    assert recovery_target().settings() == {"recovery_target_action": "promote", "recovery_target_timeline": "latest"}


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"time": "2026-03-01 03:00:00+00", "name": "p"}, ("--target-time", "--target-name")),
        ({"lsn": "0/3000000", "xid": "800"}, ("--target-lsn", "--target-xid")),
        ({"xid": "800", "immediate": True}, ("--target-xid", "--target-immediate")),
        ({"time": "2026-03-01 03:00:00+00", "lsn": "0/3000000"}, ("--target-time", "--target-lsn")),
    ],
)
def test_two_targets_are_refused_naming_both(options, named):
    with pytest.raises(RestoreInputError, match="give one recovery target") as refused:
        recovery_target(**options)
    assert all(option in str(refused.value) for option in named), refused.value


@pytest.mark.parametrize("lsn", ["0/ZZ", "3000000", "0/3000000/1", "0x0/300", "123456789/0", "0/", "-1/0", " "])
def test_a_malformed_lsn_is_refused(lsn):
    with pytest.raises(RestoreInputError, match="is not an LSN"):
        recovery_target(lsn=lsn)


@pytest.mark.parametrize("xid", ["abc", "1.5", "0x10", "", " 7e3"])
def test_a_non_integer_xid_is_refused(xid):
    with pytest.raises(RestoreInputError, match="is not a transaction id"):
        recovery_target(xid=xid or " ")


@pytest.mark.parametrize("xid", ["0", "2", "-5", str(2**64)])
def test_an_out_of_range_xid_is_refused(xid):
    with pytest.raises(RestoreInputError, match="out of range"):
        recovery_target(xid=xid)


def test_an_xid_with_an_epoch_is_refused_with_the_32_bit_xid_to_give():
    with pytest.raises(RestoreInputError, match=r"--target-xid 5\b"):
        recovery_target(xid=str(2**32 + 5))


@pytest.mark.parametrize("timeline", ["0", "-1", "two", "1.5", str(2**32)])
def test_a_bad_timeline_is_refused(timeline):
    with pytest.raises(RestoreInputError, match="--target-timeline"):
        recovery_target(timeline=timeline)


def test_an_action_other_than_promote_needs_a_target():
    with pytest.raises(RestoreInputError, match="--target-action pause needs a recovery target"):
        recovery_target(action="pause")
    with pytest.raises(RestoreInputError, match="is not one of"):
        recovery_target(lsn="0/1", action="resume")


def test_a_time_without_an_offset_is_refused():
    with pytest.raises(RestoreInputError, match="UTC offset"):
        recovery_target(time="2026-03-01 03:00:00")


# --- the choice of a backup -----------------------------------------------------------------------------------


def test_a_time_target_takes_the_newest_verified_backup_that_ended_before_it():
    chosen, why = choose_backup(recovery_target(time=_at(1.5)), _catalog(B1.backup_id, B2.backup_id, B3.backup_id))
    assert chosen == B2 and "ended at or before the target time" in why and "1 backup(s) end after" in why


def test_an_unverified_newer_backup_is_skipped_and_said():
    chosen, why = choose_backup(recovery_target(time=_at(5)), _catalog(B1.backup_id))
    assert chosen == B1
    assert B2.backup_id in why and B3.backup_id in why and "unverified" in why


def test_an_lsn_target_takes_the_newest_verified_backup_whose_end_lsn_precedes_it():
    verified = _catalog(B1.backup_id, B2.backup_id, B3.backup_id)
    assert choose_backup(recovery_target(lsn="0/8FFFFFF"), verified)[0] == B2
    assert choose_backup(recovery_target(lsn="0/9000100"), verified)[0] == B3  # its end LSN itself is reachable


def test_immediate_or_no_target_takes_the_newest_verified_backup():
    assert choose_backup(recovery_target(immediate=True), _catalog(B1.backup_id, B2.backup_id))[0] == B2
    assert choose_backup(recovery_target(), _catalog(B3.backup_id))[0] == B3


def test_no_verified_backup_before_the_target_fails_closed_naming_the_unverified_ones():
    with pytest.raises(RestoreInputError, match="no verified backup") as refused:
        choose_backup(recovery_target(time=_at(1.5)), _catalog(B3.backup_id))
    assert B1.backup_id in str(refused.value) and B2.backup_id in str(refused.value)
    with pytest.raises(RestoreInputError, match="never chosen"):
        choose_backup(recovery_target(), _catalog())


def test_a_target_time_before_the_oldest_backup_is_refused():
    with pytest.raises(RestoreInputError, match="before the oldest backup"):
        choose_backup(recovery_target(time=_at(-0.5)), _catalog(B1.backup_id))


def test_an_lsn_before_every_backups_end_is_refused():
    with pytest.raises(RestoreInputError, match="before the end of the oldest backup"):
        choose_backup(recovery_target(lsn="0/2000000"), _catalog(B1.backup_id))


def test_an_integer_timeline_rules_out_backups_of_later_timelines():
    b4 = _backup("20260301T060000Z", hours=3, stop_lsn="0/A000100", timeline=2)
    catalog = BackupCatalog([B1, B2, B3, b4], {B3.backup_id, b4.backup_id}, "s3://b/x/")
    assert choose_backup(recovery_target(timeline="1"), catalog)[0] == B3
    assert choose_backup(recovery_target(timeline="2"), catalog)[0] == b4


def test_xid_and_name_targets_need_a_named_backup():
    for target in (recovery_target(xid="800"), recovery_target(name="before-upgrade")):
        with pytest.raises(RestoreInputError, match="needs --backup"):
            choose_backup(target, _catalog(B1.backup_id))


# --- a target against the named backup ------------------------------------------------------------------------


def test_an_lsn_before_the_backups_end_is_refused():
    with pytest.raises(RestoreInputError, match=f"before the end of backup {B2.backup_id}"):
        check_target_after_backup(recovery_target(lsn="0/5000000"), B2)
    check_target_after_backup(recovery_target(lsn="0/5000100"), B2)


def test_a_time_before_the_backups_end_is_refused():
    with pytest.raises(RestoreInputError, match=f"before the end of backup {B2.backup_id}"):
        check_target_after_backup(recovery_target(time=_at(0.5)), B2)


def test_a_timeline_older_than_the_backups_is_refused():
    with pytest.raises(RestoreInputError, match="older than backup"):
        check_target_after_backup(RecoveryTarget("end_of_archive", timeline="1"), dataclasses.replace(B2, timeline=2))


@pytest.mark.parametrize(
    ("status", "message"), [("future", "in the future"), ("aborted", "aborted"), ("in progress", "not committed")]
)
def test_an_xid_the_cluster_never_committed_is_refused(status, message):
    with pytest.raises(RestoreInputError, match=message):
        check_xid_status(800, status)


@pytest.mark.parametrize("status", ["committed", "unknown", None])
def test_a_committed_or_uncheckable_xid_is_accepted(status):
    assert check_xid_status(800, status) is None  # no refusal: replay tells whether it committed


# --- refused before anything is downloaded --------------------------------------------------------------------


class _UntouchableS3:
    def __getattr__(self, name: str):
        raise AssertionError(f"S3 was used ({name}) before the target was checked")


class _Sources:
    def __init__(self, settings: Path, catalog: BackupCatalog) -> None:
        self.settings, self.catalog = settings, catalog

    def archiver_config(self) -> Path:
        return self.settings

    def archive_clients(self, bucket: str | None) -> ArchiveClients:
        return ArchiveClients(_UntouchableS3(), None, "b")  # type: ignore[arg-type]

    def fetch_config(self, archiver_config: Path, bucket: str, directory: Path) -> Path:
        return archiver_config

    def backup_catalog(self, clients: ArchiveClients, bucket: str) -> BackupCatalog:
        return self.catalog

    def xid_status(self, system_id: str, xid: int) -> str | None:
        return None


@pytest.fixture
def workdir():
    root = make_world_traversable_tmpdir("cqox-restore-unit-")
    settings = root / "archiver.json"
    settings.write_text("{}")
    settings.chmod(0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_lsn": "0/zz"}, "is not an LSN"),
        ({"target_xid": "12abc", "backup_id": B1.backup_id}, "is not a transaction id"),
        ({"target_xid": "1"}, "out of range"),
        ({"target_xid": "800"}, "needs --backup"),
        ({"target_time": _at(-1)}, "before the oldest backup"),
        ({"target_lsn": "0/1000000"}, "before the end of the oldest backup"),
        ({"target_time": _at(1.5)}, "no verified backup"),
    ],
)
def test_bad_targets_are_refused_before_anything_is_downloaded_or_created(workdir, options, message):
    request = RestoreRequest(**{"backup_id": None, **options}, pgdata=workdir / "restored")
    sources = _Sources(workdir / "archiver.json", _catalog(B3.backup_id))
    with pytest.raises(RestoreInputError, match=message):
        restore_backup(request, sources, say=lambda _m: None)
    assert not (workdir / "restored").exists()
