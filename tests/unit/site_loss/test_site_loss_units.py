"""The site-loss drill's isolation, plan and projection, without services."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cqox_platform.backup.verify.proof import RestorePoint
from cqox_platform.site_loss.isolation import NotIsolatedError, isolated_env, leaks, require_isolated
from cqox_platform.site_loss.plan import PrimaryPosition, SiteLossPlan, SiteLossPlanError
from cqox_platform.site_loss.recovery import PROJECT_DATABASE_BYTES, PROJECT_WAL_BYTES, projected, recover

RUNNING_SITE = {
    "PATH": "/usr/local/bin:/usr/bin",
    "LANG": "C.UTF-8",
    "CQOX_S3_ENDPOINT": "https://127.0.0.1:9000",
    "AWS_SHARED_CREDENTIALS_FILE": "/secrets/credentials",
    "AWS_PROFILE": "cqox-local",
    "VAULT_TOKEN": "s.secret",
    "BAO_ADDR": "https://127.0.0.1:8200",
    "PGPASSFILE": "/secrets/pgpass",
    "PGHOST": "127.0.0.1",
}


def _plan(tmp_path: Path) -> SiteLossPlan:
    return SiteLossPlan(
        dr_endpoint="https://127.0.0.1:9100",
        dr_cacert="/dr/ca.crt",
        dr_bucket="cqox-backups-dr",
        dr_reader_credentials_file="/dr/reader",
        unseal_key_file="/escrow/keys.json",
        system_id="7",
        transit_key="cqox-backups",
        archiver_role="cqox-wal-archiver",
        cli="/usr/bin/cqox-platform",
        workdir=str(tmp_path),
        primary=PrimaryPosition("0/5000060", 1, datetime(2026, 12, 4, 12, tzinfo=UTC)),
        point=RestorePoint("p1", "0/4000028", 1, datetime(2026, 12, 4, 11, tzinfo=UTC), "cqox", {"public.t": {}}),
    )


def test_the_recovery_environment_holds_nothing_of_the_running_site():
    env = isolated_env("/tmp/drill", RUNNING_SITE)
    assert leaks(env) == []
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp/drill",
        "TMPDIR": "/tmp/drill",
        "PYTHONNOUSERSITE": "1",
    }
    require_isolated(env)


def test_an_environment_with_the_running_sites_variables_is_refused_by_name_not_value():
    with pytest.raises(NotIsolatedError) as refused:
        require_isolated(RUNNING_SITE)
    message = str(refused.value)
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "BAO_ADDR", "CQOX_S3_ENDPOINT", "PGHOST", "VAULT_TOKEN"):
        assert name in message
    assert "s.secret" not in message and "/secrets/" not in message


def test_recover_in_a_leaking_environment_fails_before_touching_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "s.secret")
    result = recover(_plan(tmp_path))
    assert result.status == "failed" and "VAULT_TOKEN" in (result.error or "")
    assert result.snapshot == "" and result.seconds["vault"] == 0.0
    assert list(tmp_path.iterdir()) == []  # its scratch directory is gone


def test_the_plan_round_trips_and_a_broken_one_names_its_file(tmp_path):
    plan = _plan(tmp_path)
    assert SiteLossPlan.from_json(plan.to_json(), "plan.json") == plan
    with pytest.raises(SiteLossPlanError, match=r"broken\.json is not a site-loss drill plan"):
        SiteLossPlan.from_json('{"dr_bucket": "x"}', "broken.json")


def test_the_projection_scales_data_phases_with_the_database_and_replay_with_the_wal():
    seconds = {"vault": 5.0, "download": 10.0, "replay": 4.0, "checks": 2.0}
    out = projected(seconds, database_bytes=2**30, wal_bytes=2**28)
    assert out["vault"] == 5.0
    assert out["download"] == pytest.approx(10.0 * PROJECT_DATABASE_BYTES / 2**30)
    assert out["replay"] == pytest.approx(4.0 * PROJECT_WAL_BYTES / 2**28)
    # The RTO is site lost to promoted: the drill's own proof (checks) is projected, not counted.
    assert out["checks"] == pytest.approx(2.0 * PROJECT_DATABASE_BYTES / 2**30)
    assert out["total"] == pytest.approx(out["vault"] + out["download"] + out["replay"], abs=0.5)
    assert projected(seconds, database_bytes=0, wal_bytes=0) == {}
