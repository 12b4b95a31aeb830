"""The recoverability verdict and its table, from evidence built in memory (no stack): every rule, failing closed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cqox_platform.backup.archive.wal_names import Segment
from cqox_platform.backup.verify.checks import RPO_TARGET_SECONDS
from cqox_platform.backup.verify.info import (
    BackupEntry,
    CopyInfo,
    UnreadableCopy,
)
from cqox_platform.backup.verify.recoverability import (
    BACKUP_MAX_AGE_SECONDS,
    RTO_TARGET_SECONDS,
    Verdict,
    assess,
)
from tests.helpers import BACKUP_STOPPED
from tests.helpers import EVIDENCE_ARCHIVED as ARCHIVED
from tests.helpers import EVIDENCE_AS_OF as AS_OF
from tests.helpers import EVIDENCE_BACKUP_ID as BACKUP_ID
from tests.helpers import copy_info as _copy
from tests.helpers import drill_row as _drill
from tests.helpers import recoverability_evidence as _evidence


def _assess(**changes):
    return assess(_evidence(**changes), rpo_target_seconds=RPO_TARGET_SECONDS)


def test_fresh_proven_backups_in_both_copies_are_recoverable_with_every_number() -> None:
    result = _assess()
    assert result.verdict is Verdict.RECOVERABLE and result.reasons == []
    assert result.newest_backup_id == BACKUP_ID and result.proven_by_drill == "d-1"
    assert result.numbers == {
        "newest_backup_age_seconds": 7200.0,
        "rto_seconds": 42.5,
        "rpo_seconds": 60.0,
        "wal_gaps": 0.0,
        "dr_lag_seconds": 300.0,
    }
    assert [r.item for r in result.rows] == [
        "newest backup",
        "proven restorable",
        "last drill RTO",
        "RPO",
        "WAL gaps",
        "DR copy lag",
        "recovery window",
    ]
    assert all(r.ok for r in result.rows), result.rows
    assert result.window_earliest == BACKUP_STOPPED and result.window_latest == AS_OF - timedelta(seconds=60)
    assert result.summary.startswith(f"recoverable: newest backup {BACKUP_ID} proven by drill d-1")


def test_an_unproven_newest_backup_is_at_risk_naming_the_drill_to_run() -> None:
    newest = "20260301T040000Z"
    primary = _copy(ids=(BACKUP_ID, newest))
    unproven = BackupEntry(primary.backups[1].record, [], None, None)
    primary = CopyInfo(primary.name, primary.where, [primary.backups[0], unproven], primary.window, 8)
    result = _assess(copies=[primary, _copy("dr")])
    assert result.verdict is Verdict.AT_RISK
    assert result.newest_backup_id == newest and result.proven_by_drill is None
    assert any(f"materialize restore_drill with backup_id {newest}" in r for r in result.reasons), result.reasons
    proof = next(r for r in result.rows if r.item == "proven restorable")
    assert not proof.ok and proof.value == "no, no drill yet"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"as_of": BACKUP_STOPPED + timedelta(seconds=BACKUP_MAX_AGE_SECONDS + 60)}, "the daily backup did not run"),
        ({"last_drill": None}, "no restore drill ever ran"),
        ({"last_drill": _drill("d-2", status="failed")}, "the last drill d-2 (backup 20260301T030000Z) is failed"),
        ({"last_drill": _drill("d-3", rto=RTO_TARGET_SECONDS + 1)}, "over the RTO target of 14400 s"),
        ({"dr_configured": False, "copies": [_copy("primary")]}, "no second-region bucket is configured"),
        ({"copies": [_copy("primary", sealed_ago=RPO_TARGET_SECONDS + 5), _copy("dr")]}, "behind the RPO target"),
        ({"copies": [_copy("primary", archived=ARCHIVED - {Segment(1, 5).name}), _copy("dr")]}, "missing from"),
    ],
)
def test_each_kind_of_missing_or_stale_evidence_puts_it_at_risk(changes: dict, expected: str) -> None:
    result = _assess(**changes)
    assert result.verdict is Verdict.AT_RISK, result
    assert any(expected in r for r in result.reasons), result.reasons
    assert not all(r.ok for r in result.rows)


def test_an_unreadable_dr_copy_is_at_risk_and_names_it() -> None:
    lost = UnreadableCopy(
        "dr", "s3://dr-bucket/postgres/7/", "the dr copy (s3://dr-bucket/postgres/7/) cannot be read: 403"
    )
    result = _assess(copies=[_copy("primary")], unreadable=[lost])
    assert result.verdict is Verdict.AT_RISK and result.dr_lag_seconds is None
    assert any("cannot be read: 403" in r for r in result.reasons)
    assert "dr_lag_seconds" not in result.numbers  # unknown is left out, never plotted as a number


@pytest.mark.parametrize(
    "changes",
    [
        {"copies": [_copy("primary", ids=()), _copy("dr", ids=())]},
        {"copies": [_copy("primary", verified=False), _copy("dr", verified=False)]},
        {"copies": [_copy("primary", archived=ARCHIVED - {Segment(1, 2).name})], "dr_configured": False},
        {
            "copies": [],
            "unreadable": [UnreadableCopy("primary", "s3://p/", "the primary copy (s3://p/) cannot be read: down")],
        },
    ],
    ids=["no backup", "none verified", "own WAL missing", "nothing readable"],
)
def test_nothing_known_to_restore_is_not_recoverable_with_a_reason(changes: dict) -> None:
    result = _assess(**changes)
    assert result.verdict is Verdict.NOT_RECOVERABLE
    assert result.reasons and result.summary.startswith("not recoverable: ")


def test_a_dr_copy_alone_still_restores_so_an_unreadable_primary_is_at_risk() -> None:
    down = UnreadableCopy("primary", "s3://p/", "the primary copy (s3://p/) cannot be read: down")
    result = _assess(copies=[_copy("dr")], unreadable=[down])
    assert result.verdict is Verdict.AT_RISK and result.newest_backup_id == BACKUP_ID
    assert "rpo_seconds" not in result.numbers
    assert next(r for r in result.rows if r.item == "recovery window").value.endswith("(from the DR copy)")
