"""``backup_alert_rules``: the alerts on the gauges the other backup assets push, checked and loaded."""

import subprocess

import dagster as dg

from assets.backups.common import GROUP
from cqox_platform.alerts import BACKUP_ALERT_RULES
from cqox_platform.resources.prometheus import PrometheusResource

ALERT_RULES = BACKUP_ALERT_RULES


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Alert rules on the backup gauges (cqox_platform/alerts/backup-alerts.yml), checked with promtool "
    "and loaded into Prometheus.",
)
def backup_alert_rules(context: dg.AssetExecutionContext, prometheus: PrometheusResource) -> dg.MaterializeResult:
    check = subprocess.run(["promtool", "check", "rules", str(ALERT_RULES)], capture_output=True, text=True)
    if check.returncode != 0:
        raise dg.Failure(f"promtool check rules {ALERT_RULES} failed:\n{check.stdout}{check.stderr}")
    groups = prometheus.install_rules("cqox-backup-alerts.yml", ALERT_RULES.read_text())
    context.log.info(check.stdout.strip())
    return dg.MaterializeResult(
        metadata={
            "file": str(ALERT_RULES),
            "promtool": check.stdout.strip(),
            "loaded_groups": dg.MetadataValue.json(groups),
        }
    )
