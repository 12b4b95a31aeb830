"""What keeps the platform healthy runs on a fresh instance without anyone switching it on in the UI.

A schedule or sensor left STOPPED by default is invisible until what it maintains breaks: the daily vault_config
renews the AppRole secret-ids (archiving and every Vault-using run stop when they expire), the monthly rotation
keeps the datasets' key young. Every schedule and every sensor of the code location must therefore default to
RUNNING; one that should not would have to be listed here with its reason.
"""

from __future__ import annotations

import time

import dagster as dg
import pytest

#: Schedules and sensors deliberately STOPPED by default, with why (none today).
OPT_IN: dict[str, str] = {}


def _repository() -> dg.RepositoryDefinition:
    from cqox_platform.definitions import defs

    return defs.get_repository_def()


def test_every_schedule_runs_by_default():
    stopped = [
        s.name
        for s in _repository().schedule_defs
        if s.default_status != dg.DefaultScheduleStatus.RUNNING and s.name not in OPT_IN
    ]
    assert not stopped, f"schedules STOPPED on a fresh instance: {stopped}"


def test_every_sensor_runs_by_default():
    stopped = [
        s.name
        for s in _repository().sensor_defs
        if s.default_status != dg.DefaultSensorStatus.RUNNING and s.name not in OPT_IN
    ]
    assert not stopped, f"sensors STOPPED on a fresh instance: {stopped}"


def test_secret_ids_and_keys_are_renewed_by_what_runs_by_default():
    repo = _repository()
    assert repo.get_schedule_def("vault_config_job_schedule").job_name == "vault_config_job"
    assert repo.get_schedule_def("dataset_key_rotation_job_schedule").job_name == "dataset_key_rotation_job"
    sensor = repo.get_sensor_def("secret_id_renewal_sensor")
    assert sensor.job_name == "vault_config_job"
    assert sensor.minimum_interval_seconds <= 60


def _materialized(instance: dg.DagsterInstance, secret_ids: dict | None) -> None:
    from assets.security import vault_config

    metadata = {} if secret_ids is None else {"secret_ids": dg.MetadataValue.json(secret_ids)}
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=vault_config.key, metadata=metadata))


@pytest.mark.parametrize(
    ("left", "requested"),
    [(None, True), (250.0, False), (100.0, True)],
)
def test_the_renewal_sensor_requests_vault_config_once_half_the_lifetime_is_gone(monkeypatch, left, requested):
    from sensors.vault_sensor import secret_id_renewal_sensor

    monkeypatch.setenv("CQOX_VAULT_SECRET_ID_TTL", "300s")
    with dg.instance_for_test() as instance:
        if left is not None:
            record = {"expires_at": time.time() + left, "ttl_seconds": 300.0}
            _materialized(instance, {"cqox-platform": record, "cqox-wal-archiver": record})
        result = secret_id_renewal_sensor(dg.build_sensor_context(instance=instance))
    if requested:
        assert isinstance(result, dg.RunRequest) and result.tags["cqox/renewal-reason"]
    else:
        assert isinstance(result, dg.SkipReason) and "half" in result.skip_message


def test_the_renewal_sensor_never_stacks_a_second_run_on_one_in_flight(monkeypatch):
    from sensors.vault_sensor import secret_id_renewal_sensor

    monkeypatch.setenv("CQOX_VAULT_SECRET_ID_TTL", "300s")
    with dg.instance_for_test() as instance:
        instance.add_run(
            dg.DagsterRun(job_name="vault_config_job", run_id="a" * 36, status=dg.DagsterRunStatus.STARTED)
        )
        result = secret_id_renewal_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "in flight" in result.skip_message
