"""Failed Dagster runs of the jobs that protect data or production, as Alertmanager alerts.

A failed backup run is invisible to Prometheus until its gauges go stale (45 minutes for the RPO, a day for the
base backup); the run itself knows at once. ``run_failure_alert_sensor`` turns the failure into an alert posted
to Alertmanager's v2 API, so it goes through the same routing, grouping, silences and receivers as every rule.

Which runs and how loud: by job name or by the assets the run materialized (automation runs have no job of
their own). Nothing is resolved later: ``endsAt`` is set ``ALERT_LIFETIME`` ahead, long enough for a person to
act on the page, after which Alertmanager resolves it by itself (the next scheduled run either succeeds, or
fails and alerts again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

ALERT_NAME = "CqoxDagsterRunFailed"
ALERT_LIFETIME = timedelta(hours=24)
SERVICE = "cqox-platform"

#: Job or asset name -> (family, severity). A run that touches several takes the most severe.
WATCHED: dict[str, tuple[str, str]] = {
    # Backups: a failed base backup, WAL check or DR copy leaves the RPO/RTO promise unproven.
    "postgres_basebackup": ("backup", "page"),
    "wal_archive_status": ("backup", "page"),
    "backups_dr_copy": ("backup", "page"),
    "timeline_backup_job": ("backup", "page"),
    # Restore drills: the proof that backups restore.
    "restore_drill": ("drill", "page"),
    "restore_drill_job": ("drill", "page"),
    # Retention only deletes; a failed run costs storage, not data.
    "backup_retention": ("retention", "ticket"),
    "backups_dr_retention": ("retention", "ticket"),
    # HA operations a person started and may be waiting on; a failed one may leave the cluster mid-switch.
    "ha_switchover_job": ("ha", "page"),
    "ha_reinit_job": ("ha", "page"),
    "postgres_cluster_status": ("ha", "ticket"),
    # Canary: the rollout holds at its last safe step on failure.
    "canary_rollout": ("canary", "ticket"),
    "canary_decision_job": ("canary", "ticket"),
    "canary_start_job": ("canary", "ticket"),
    # The alert drill itself: an alarm path that could not be proven.
    "alert_drill": ("alert-drill", "ticket"),
    # Vault as code and secret-id renewal (a failed renewal is retried; CqoxVaultSecretIdExpiring pages later).
    "vault_config_job": ("vault", "ticket"),
    # The datasets' key rotation: the old key version stays in use until a run succeeds.
    "dataset_key_rotation_job": ("key-rotation", "ticket"),
}
#: Operator jobs generated per action (canary_promote_job, canary_abort_job, ...).
WATCHED_PREFIXES = {"canary_": ("canary", "ticket")}
_RANK = {"page": 2, "ticket": 1}


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    job_name: str
    assets: tuple[str, ...]
    family: str
    severity: str
    error: str
    run_url: str | None


def classify(job_name: str, asset_names: Iterable[str]) -> tuple[str, str] | None:
    """(family, severity) of a run of ``job_name`` that materialized ``asset_names``; None when not watched."""
    found = [WATCHED[n] for n in (job_name, *asset_names) if n in WATCHED]
    found += [v for prefix, v in WATCHED_PREFIXES.items() if job_name.startswith(prefix)]
    return max(found, key=lambda fs: _RANK[fs[1]]) if found else None


def run_url(webserver_url: str | None, run_id: str) -> str | None:
    return f"{webserver_url.rstrip('/')}/runs/{run_id}" if webserver_url else None


def failed_run_alert(run: FailedRun, now: datetime | None = None) -> dict[str, Any]:
    """The alert as ``POST /api/v2/alerts`` takes it; one per run (``run_id`` label), grouped by service."""
    start = now or datetime.now(UTC)
    what = f"{run.job_name} ({', '.join(run.assets)})" if run.assets else run.job_name
    annotations = {
        "summary": f"Dagster run of {what} failed ({run.family})",
        "description": run.error[:500],
        "runbook": "Open the run, read the failed step's error, fix, and re-execute from failure.",
    }
    if run.run_url:
        annotations["run_url"] = run.run_url
    alert: dict[str, Any] = {
        "labels": {
            "alertname": ALERT_NAME,
            "severity": run.severity,
            "service": SERVICE,
            "family": run.family,
            "job": run.job_name,
            "run_id": run.run_id,
        },
        "annotations": annotations,
        "startsAt": start.isoformat(),
        "endsAt": (start + ALERT_LIFETIME).isoformat(),
    }
    if run.run_url:
        alert["generatorURL"] = run.run_url
    return alert
