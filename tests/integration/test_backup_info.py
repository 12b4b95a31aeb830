"""`backup info` and `backup list --json` on the real stack: the verdict follows the drills, the exit code follows the
verdict, an unreadable copy is an error naming it, and the JSON validates against the schemas the package ships."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from unittest import mock

import jsonschema
import pytest

from assets import backups as backup_assets
from cqox_platform.cli.json_schema import load_schema
from cqox_platform.schema import MigrationRunner
from tests.helpers import (
    assert_drill_passed,
    asset_metadata,
    check_results,
    materialize_backups,
    materialize_vault_config,
    postgres_admin,
    running_stack,
)

CLI = [sys.executable, "-m", "cqox_platform.cli"]


@pytest.fixture(scope="module")
def stack():
    """A stack of this module's own: the verdicts read the whole archive of both copies, which on the session stack
    holds what other modules did to it (retention deleting WAL, faults, DR copies at other moments); there the DR
    copy was once found with five segments the primary no longer had."""
    with running_stack("cqox-test-info-", with_dagster=False) as st:
        yield st


@pytest.fixture(scope="module")
def env(stack):
    with mock.patch.dict(os.environ, stack.env()):
        assert materialize_vault_config(stack).success
        with postgres_admin(stack).connect(autocommit=True) as conn:
            MigrationRunner().migrate(conn)
        yield stack.env()


def _cli(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], env={**os.environ, **env, **extra}, capture_output=True, text=True, timeout=300
    )


def _valid(command: str, result: subprocess.CompletedProcess) -> dict:
    document = json.loads(result.stdout)
    jsonschema.Draft202012Validator(load_schema(command), format_checker=jsonschema.FormatChecker()).validate(document)
    return document


def test_an_unreadable_dr_copy_is_an_error_naming_it_never_an_empty_copy(env):
    missing = "cqox-no-such-dr-bucket"
    result = _cli(env, "backup", "info", "--json", CQOX_S3_DR_BUCKET=missing)
    assert result.returncode == 1, result.stderr[-2000:]
    report = _valid("backup-info", result)
    primary, dr = report["copies"]
    assert primary["error"] is None and isinstance(primary["backups"], list)
    assert dr["backups"] is None and missing in dr["error"] and "dr copy" in dr["error"]
    assert not report["verdict"]["passed"]
    assert any("dr copy" in line and missing in line for line in result.stderr.splitlines()), result.stderr
    table = _cli(env, "backup", "info", CQOX_S3_DR_BUCKET=missing)
    assert table.returncode == 1 and missing in table.stderr and "dr copy" not in table.stdout  # no empty table


def test_info_fails_on_an_unverified_newest_backup_and_passes_once_drilled_and_copied(stack, env):
    created = _cli(env, "backup", "create", "--json")
    assert created.returncode == 0, created.stderr[-2000:]
    result = _valid("backup-create", created)
    backup_id = result["backup"]["backup_id"]
    assert result["where"].startswith("s3://") and backup_id in result["where"]
    assert result["backup"]["verified"] is False and result["restore_point"]["name"]

    unverified = _cli(env, "backup", "info", "--json")
    assert unverified.returncode == 3, unverified.stderr[-2000:]
    report = _valid("backup-info", unverified)
    primary = report["copies"][0]
    assert primary["name"] == "primary" and primary["backups"][-1]["backup_id"] == backup_id
    assert primary["backups"][-1]["verified"] is False and primary["backups"][-1]["wal_missing"] == []
    assert any(backup_id in r and "not verified" in r for r in report["verdict"]["reasons"]), report["verdict"]
    assert any(backup_id in line and "not verified" in line for line in unverified.stderr.splitlines())
    listed = _cli(env, "backup", "list", "--json", "--require-verified")
    assert listed.returncode == 3 and backup_id in listed.stderr
    listing = _valid("backup-list", listed)
    assert (listing["newest_backup_id"], listing["newest_verified"]) == (backup_id, False)
    assert _cli(env, "backup", "list").returncode == 0  # the default keeps its callers' exit code

    drill = materialize_backups(
        stack, env, [backup_assets.restore_drill], {"restore_drill": {"config": {"backup_id": backup_id}}}
    )
    assert_drill_passed(drill)
    copied = materialize_backups(stack, env, [backup_assets.backups_dr_copy])
    assert check_results(copied) == {"dr_copy_verified": True}

    verified = _cli(env, "backup", "info", "--json")
    report = _valid("backup-info", verified)
    assert verified.returncode == 0, report["verdict"]
    assert report["verdict"] == {"passed": True, "errors": [], "reasons": []}
    assert [c["name"] for c in report["copies"]] == ["primary", "dr"]
    for copy in report["copies"]:
        newest = copy["backups"][-1]
        assert newest["backup_id"] == backup_id and newest["verified"] is True
        assert newest["verified_by"]["drill_id"] == asset_metadata(drill, "restore_drill")["drill_id"]
        window = copy["window"]
        earliest, stop, latest, as_of = map(
            datetime.fromisoformat, [window["earliest"], newest["stop_time"], window["latest"], report["as_of"]]
        )
        # The window reaches the newest backup's consistency point: its stop segment is in the WAL walked.
        assert earliest <= stop and earliest <= latest <= as_of and window["wal_to"] >= newest["wal_stop"]
        assert window["gap_count"] == 0 and window["lag_seconds"] <= report["rpo_target_seconds"]
        # Proven: the end of the oldest backup there that a drill verified and whose own WAL the copy holds.
        proven = next(b for b in copy["backups"] if b["verified"] and not b["wal_missing"])
        assert window["earliest_verified"] == proven["stop_time"]
        assert earliest <= datetime.fromisoformat(window["earliest_verified"]) <= stop
    listed = _cli(env, "backup", "list", "--json", "--require-verified")
    assert listed.returncode == 0 and _valid("backup-list", listed)["newest_verified"] is True
    table = _cli(env, "backup", "info")
    assert table.returncode == 0 and "verdict: OK" in table.stdout and "recovery window:" in table.stdout
    assert f"yes, drill {newest['verified_by']['drill_id']}" in table.stdout, table.stdout
