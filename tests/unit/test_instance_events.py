"""Backups made outside Dagster, recorded on ``postgres_basebackup`` in a real (SQLite) Dagster instance; the
CLI's hand-over to that program fails soft. Against the stack's instance: tests/integration/test_backups.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import click
import dagster as dg
import pytest

from cqox_platform import instance_events
from cqox_platform.cli import backup as cli_backup

CREATED = {
    "schema_version": 1,
    "where": "s3://cqox-backups/postgres/7/base/20261204T051500Z/base.tar.zst.enc",
    "backup": {
        "backup_id": "20261204T051500Z",
        "timeline": 1,
        "start_time": "2026-12-04T05:15:00+00:00",
        "stop_time": "2026-12-04T05:15:09+00:00",
        "start_lsn": "0/5000028",
        "stop_lsn": "0/5000138",
        "wal_start": "000000010000000000000005",
        "wal_stop": "000000010000000000000005",
        "database_bytes": 40 * 2**20,
        "stored_bytes": 6 * 2**20,
        "verified": False,
        "verified_by": None,
        "last_drill": None,
    },
    "restore_point": {"name": "backup-20261204T051500Z", "lsn": "0/6000060", "timeline": 1},
}


def _main(monkeypatch, capsys, home: Path | None) -> tuple[int, str, str]:
    if home is None:
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
    else:
        monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(CREATED)))
    code = instance_events.main(["backup-created", "--made-by", "CLI"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _latest(home: Path) -> dg.EventLogEntry | None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return instance.get_latest_materialization_event(instance_events.BASE_BACKUP_ASSET)


def test_a_cli_backup_becomes_the_newest_runless_materialization_with_id_size_time_and_maker(
    monkeypatch, capsys, tmp_path
):
    code, out, err = _main(monkeypatch, capsys, tmp_path)
    assert (code, err) == (instance_events.RECORDED, "")
    assert out.strip() == "recorded base backup 20261204T051500Z on postgres_basebackup (made by CLI)"
    event = _latest(tmp_path)
    assert event is not None and not event.run_id
    metadata = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert metadata["backup_id"] == "20261204T051500Z" and metadata["made_by"] == "CLI"
    assert (metadata["database_mib"], metadata["stored_mib"]) == (40.0, 6.0)
    assert metadata["stop_time"] == 1796361309.0  # 2026-12-04T05:15:09Z, a timestamp the UI shows as a date


def test_without_dagster_home_it_says_how_to_set_it(monkeypatch, capsys):
    code, out, err = _main(monkeypatch, capsys, None)
    assert code == instance_events.NO_INSTANCE and out == ""
    assert err.startswith("no Dagster instance configured (DAGSTER_HOME is not set)") and "stack env" in err


def test_an_instance_that_cannot_load_is_a_one_line_failure(monkeypatch, capsys, tmp_path):
    code, _, err = _main(monkeypatch, capsys, tmp_path / "missing")
    assert code == instance_events.FAILED
    assert err.startswith("the Dagster instance in DAGSTER_HOME could not be loaded: ") and err.count("\n") == 1


@pytest.mark.parametrize("with_home", [True, False])
def test_the_cli_hands_the_backup_over_and_only_warns_when_it_cannot(monkeypatch, tmp_path, with_home):
    """`backup create` runs the recorder as its own program (the CLI never imports Dagster) and never fails on it."""
    said: list[str] = []
    monkeypatch.setattr(click, "echo", lambda message, err=False: said.append(message))
    if with_home:
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    else:
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
    cli_backup._record_in_dagster(CREATED)
    (line,) = said
    if with_home:
        assert line == "backup create: recorded base backup 20261204T051500Z on postgres_basebackup (made by CLI)"
        assert _latest(tmp_path).asset_materialization.metadata["backup_id"].value == "20261204T051500Z"
    else:
        assert line.startswith(
            "warning: backup 20261204T051500Z is complete, but it is not recorded on postgres_basebackup in "
            "Dagster: no Dagster instance configured (DAGSTER_HOME is not set)"
        )
