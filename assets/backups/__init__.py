"""Backups and disaster recovery as assets (group ``backups``).

``postgres_basebackup`` takes a base backup, ``wal_archive_status`` measures archiving and the RPO every 15 minutes,
``restore_drill`` proves a backup restores and measures the RTO, ``backup_retention`` deletes what the window no
longer needs, ``backups_dr_copy`` keeps the second region current (``backups_dr_retention`` expires it by the same
rules), and ``backup_alert_rules`` loads the alerts on the gauges all of them push. ``recoverability`` sums them up
in one verdict, the page to open first. Repositories of other engines (Barman Cloud, pgBackRest) get the same
verdicts from ``repositories.py``. Every result lands in the metadata an operator reads in the UI.

The assets only wire resources to the core (``cqox_platform.backup``: SQL, drill planning, check verdicts,
gauges) and map results to metadata. Their order is the asset graph plus the automation conditions in
``common.py``; the sensor that evaluates them lives in ``sensors/backup_schedules.py``.
"""

import dagster as dg

from assets.backups import recoverability_view, repositories
from assets.backups.alert_rules import ALERT_RULES, backup_alert_rules
from assets.backups.base_backup import postgres_basebackup
from assets.backups.common import GROUP
from assets.backups.dr_copy import backups_dr_copy
from assets.backups.drill import DrillConfig, restore_drill
from assets.backups.recoverability_view import recoverability
from assets.backups.retention import RetentionConfig, backup_retention, backups_dr_retention
from assets.backups.wal import WalCheckConfig, wal_archive_status

__all__ = [
    "ALERT_RULES",
    "GROUP",
    "DrillConfig",
    "RetentionConfig",
    "WalCheckConfig",
    "backup_alert_rules",
    "backup_retention",
    "backups_dr_copy",
    "backups_dr_retention",
    "defs",
    "postgres_basebackup",
    "recoverability",
    "restore_drill",
    "wal_archive_status",
]

defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[
            postgres_basebackup,
            wal_archive_status,
            restore_drill,
            backup_retention,
            backups_dr_copy,
            backups_dr_retention,
            backup_alert_rules,
        ]
    ),
    recoverability_view.defs,
    # One set per repository of another engine in CQOX_BACKUP_REPOSITORIES (none when unset).
    repositories.repository_defs(),
)
