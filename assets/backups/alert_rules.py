"""``backup_alert_rules``: the alerts on the gauges the other backup assets push, checked, tested and loaded."""

import dagster as dg

from assets.backups.common import GROUP
from cqox_platform.alerts import BACKUP_ALERT_RULE_TESTS, BACKUP_ALERT_RULES
from cqox_platform.alerts.rules import AlertRulesError, check_and_test
from cqox_platform.resources.prometheus import PrometheusResource

ALERT_RULES = BACKUP_ALERT_RULES


@dg.asset(
    group_name=GROUP,
    kinds={"prometheus"},
    description="Alert rules on the backup gauges (cqox_platform/alerts/backup-alerts.yml), checked with promtool, "
    "unit-tested with promtool (backup-alerts.test.yml) and loaded into Prometheus.",
)
def backup_alert_rules(context: dg.AssetExecutionContext, prometheus: PrometheusResource) -> dg.MaterializeResult:
    try:
        checked = check_and_test(ALERT_RULES, BACKUP_ALERT_RULE_TESTS)
    except AlertRulesError as exc:
        raise dg.Failure(str(exc)) from exc
    groups = prometheus.install_rules("cqox-backup-alerts.yml", ALERT_RULES.read_text())
    context.log.info(checked.check_output)
    return dg.MaterializeResult(
        metadata={
            "file": str(ALERT_RULES),
            "promtool": checked.check_output,
            "promtool_tests": checked.test_output,
            "loaded_groups": dg.MetadataValue.json(groups),
        }
    )
