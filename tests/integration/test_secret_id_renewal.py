"""With a short secret-id lifetime the platform renews its AppRole secret-ids by itself, with no person involved:
a real ``dagster-daemon`` runs ``secret_id_renewal_sensor``, which launches ``vault_config`` before half of a
lifetime is gone, again and again; the credentials files always log in, the secret-ids they held before are
gone, and WAL archiving goes on past the first secret-ids' expiry.

The daemon has its own Dagster instance (a temporary ``DAGSTER_HOME``) and loads only the security code
(``renewal_location.py``), so nothing else starts on the session's stack. Afterwards ``vault_config`` runs once
with the default lifetime, so the tests after this one find credentials good for 720 hours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from unittest import mock

import dagster as dg
import hvac
import psycopg
import pytest
import yaml

from cqox_platform.stack.process import find_binary, stop_pid
from tests.helpers import materialize_vault_config

#: Short enough to see two renewals in a test, long enough for a loaded machine to launch a run in the half left
#: (the sensor looks every 30 s; a run takes 20-40 s, longer at the end of a CI run): renewal is due after 150 s,
#: the secret-id expires at 300 s. 240 s was once too short there: the first secret-id expired unrenewed.
TTL = 300
REPO = Path(__file__).resolve().parents[2]


def _secret_ids(env: dict[str, str]) -> dict[str, dict[str, str]]:
    """AppRole -> its credentials (role_id, secret_id) as the platform's, the snapshot identity's and the archiver's
    files hold them."""
    platform = json.loads(Path(env["CQOX_VAULT_APPROLE_FILE"]).read_text())
    snapshot = json.loads(Path(env["CQOX_VAULT_SNAPSHOT_APPROLE_FILE"]).read_text())
    archiver = json.loads(Path(env["CQOX_WAL_ARCHIVER_CONFIG"]).read_text())
    return {
        "cqox-platform": {"role_id": platform["role_id"], "secret_id": platform["secret_id"]},
        "cqox-vault-snapshot": {"role_id": snapshot["role_id"], "secret_id": snapshot["secret_id"]},
        "cqox-wal-archiver": {"role_id": archiver["role_id"], "secret_id": archiver["secret_id"]},
    }


def _login_error(env: dict[str, str], creds: dict[str, str]) -> str | None:
    """None when the credentials log in, else Vault's answer (expired and destroyed secret-ids read alike)."""
    client = hvac.Client(url=env["VAULT_ADDR"], verify=env["VAULT_CACERT"])
    try:
        client.auth.approle.login(role_id=creds["role_id"], secret_id=creds["secret_id"])
    except hvac.exceptions.VaultError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _logs_in(env: dict[str, str], creds: dict[str, str]) -> bool:
    return _login_error(env, creds) is None


def _start_daemon(env: dict[str, str], home: Path) -> int:
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}}))
    workspace = home / "workspace.yaml"
    location = {
        "python_file": {
            "relative_path": str(REPO / "tests/integration/renewal_location.py"),
            "working_directory": str(REPO),
            "location_name": "renewal",
        }
    }
    workspace.write_text(yaml.safe_dump({"load_from": [location]}))
    with open(home / "daemon.log", "ab") as log:
        process = subprocess.Popen(
            [find_binary("dagster-daemon"), "run", "-w", str(workspace)],
            env={**env, "DAGSTER_HOME": str(home)},
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process.pid


def _archives(stack) -> None:
    with psycopg.connect(**stack.service("postgres").conninfo(), autocommit=True) as conn:
        before = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0]
        conn.execute("CREATE TABLE IF NOT EXISTS renewal_wal (n int)")
        conn.execute("INSERT INTO renewal_wal SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 120
        while conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()[0] <= before:
            assert time.monotonic() < deadline, "a new WAL segment was not archived"
            time.sleep(1)


@pytest.mark.timeout(1500)  # two lifetimes of 300 s, a daemon start and two vault_config runs in process
def test_short_lived_secret_ids_are_renewed_by_the_platform_itself(stack, tmp_path):
    env = {**os.environ, **stack.env(), "CQOX_VAULT_SECRET_ID_TTL": f"{TTL}s"}
    # The operator shortens the lifetime and vault_config runs once (it replaces the 720 h secret-ids at once).
    with mock.patch.dict(os.environ, env):
        assert materialize_vault_config(stack).success
    issued_at = time.time()
    first = _secret_ids(env)
    seen = {role: [creds["secret_id"]] for role, creds in first.items()}
    home = tmp_path / "dagster"
    pid = _start_daemon(env, home)
    try:
        deadline = issued_at + 2 * TTL + 120
        while min(len(ids) for ids in seen.values()) < 3:  # two renewals of each, by the sensor's runs
            renewals = {role: len(ids) - 1 for role, ids in seen.items()}
            assert time.time() < deadline, (
                f"secret-ids renewed {renewals} times in {time.time() - issued_at:.0f} s; "
                f"daemon log:\n{(home / 'daemon.log').read_text()[-3000:]}"
            )
            for role, creds in _secret_ids(env).items():
                if creds["secret_id"] != seen[role][-1]:
                    seen[role].append(creds["secret_id"])
                error = _login_error(env, creds)
                assert error is None, (
                    f"{role}'s credentials file holds a secret-id that no longer logs in ({error}), "
                    f"{time.time() - issued_at:.0f} s after the first was issued (lifetime {TTL} s; renewed "
                    f"{len(seen[role]) - 1} times); daemon log:\n{(home / 'daemon.log').read_text()[-3000:]}"
                )
            time.sleep(2)
        renewed_for = time.time() - issued_at
        print(f"\nsecret-ids ({TTL} s lifetime) renewed twice each by the sensor's runs within {renewed_for:.0f} s")
        # The first secret-ids are gone (destroyed when replaced), and the current ones work past their expiry.
        for role, creds in first.items():
            assert not _logs_in(env, creds), f"{role}'s first secret-id still logs in"
        assert time.time() > issued_at + TTL
        _archives(stack)
        # Launched by the sensor, not by a person.
        with mock.patch.dict(os.environ, {"DAGSTER_HOME": str(home)}), dg.DagsterInstance.get() as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name="vault_config_job"))
        assert len(runs) >= 2
        assert all(run.tags.get("dagster/sensor_name") == "secret_id_renewal_sensor" for run in runs)
        assert not [run.run_id for run in runs if run.status == dg.DagsterRunStatus.FAILURE]
    finally:
        stop_pid(pid, sig=signal.SIGTERM, timeout=60)
        # Back to the default lifetime for the tests after this one (it replaces the short-lived secret-ids).
        assert materialize_vault_config(stack).success
