"""Renews the AppRole secret-ids by itself: asks for a ``vault_config`` run once half a secret-id's lifetime is gone.

The daily ``vault_config`` schedule renews them too, but only at its hour and only while the lifetime is long; a
failed run would wait a day. This sensor decides from what the last ``vault_config`` run recorded
(``cqox_platform.secrets.renewal``), so it needs no Vault access, works for any lifetime
(``CQOX_VAULT_SECRET_ID_TTL``), retries a failed renewal after a sixteenth of the lifetime, and never stacks a
second run on one in flight. If renewal keeps failing, ``CqoxVaultSecretIdExpiring`` pages with a third of the
lifetime left.
"""

import time

import dagster as dg

from assets.security import vault_config, vault_config_job
from cqox_platform.secrets.renewal import SECRET_IDS_METADATA, renewal_due, retry_after_seconds
from cqox_platform.secrets.vault_setup import AppRoleLimits
from cqox_platform.settings import get_settings

IN_FLIGHT = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


def _recorded(instance: dg.DagsterInstance) -> dict | None:
    """The secret-ids the latest vault_config materialization recorded (``None``: never materialized or none)."""
    event = instance.get_latest_materialization_event(vault_config.key)
    materialization = event.asset_materialization if event is not None else None
    entry = materialization.metadata.get(SECRET_IDS_METADATA) if materialization is not None else None
    value = getattr(entry, "value", None)
    return value if isinstance(value, dict) else None


@dg.sensor(
    job=vault_config_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests vault_config once an AppRole secret-id has less than half its lifetime left (what "
    "vault_config renews), from what the last run recorded; retries failed renewals, one run at a time.",
)
def secret_id_renewal_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    ttl = AppRoleLimits.from_settings(get_settings()).ttl_seconds
    now = time.time()
    reason = renewal_due(_recorded(context.instance), ttl, now)
    if reason is None:
        return dg.SkipReason("every secret-id has more than half its lifetime left")
    (latest,) = context.instance.get_run_records(dg.RunsFilter(job_name=vault_config_job.name), limit=1) or (None,)
    if latest is not None and latest.dagster_run.status in IN_FLIGHT:
        return dg.SkipReason(f"renewal due ({reason}); vault_config run {latest.dagster_run.run_id} is in flight")
    ended = latest.end_time if latest is not None else None
    wait = retry_after_seconds(ttl)
    if ended is not None and now - ended < wait:
        return dg.SkipReason(
            f"renewal due ({reason}); the last vault_config run ended {now - ended:.0f} s ago, "
            f"retrying {wait:.0f} s after it"
        )
    context.log.info(f"requesting vault_config: {reason}")
    return dg.RunRequest(tags={"cqox/renewal-reason": reason[:200]})


defs = dg.Definitions(sensors=[secret_id_renewal_sensor])
