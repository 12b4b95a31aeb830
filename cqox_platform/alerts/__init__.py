"""Alerting: Prometheus alert rules and Alertmanager routing the platform installs, shipped as package data
(see ``cqox_platform.package_data``), and the clients of Alertmanager and the local receiver."""

from cqox_platform.package_data import package_path

# Alerts on the backup gauges (WAL lag, base backup and drill age, the DR copy's recovery window), with their
# promtool unit tests; checked, tested and installed by the backup_alert_rules asset.
BACKUP_ALERT_RULES = package_path(__name__, "backup-alerts.yml")
BACKUP_ALERT_RULE_TESTS = package_path(__name__, "backup-alerts.test.yml")

# Alert routing as code (severity -> receiver, grouping, inhibition, route test cases); rendered and route-tested
# by the alertmanager_config asset (cqox_platform.alerts.routing).
ROUTING_SPEC = package_path(__name__, "routing.yaml")

# Alerts on the platform itself (the Dagster daemon's heartbeat) and on pushed gauges gone stale, with their
# promtool unit tests; checked, tested and installed by the platform_alert_rules asset.
PLATFORM_ALERT_RULES = package_path(__name__, "platform-alerts.yml")
ALERT_RULE_TESTS = package_path(__name__, "alert-rules.test.yml")

# Alerts on the services themselves from what Prometheus scrapes (exporters, Patroni, etcd, OpenBao, probes),
# with their promtool unit tests; installed by platform_alert_rules next to the platform alerts.
SERVICE_ALERT_RULES = package_path(__name__, "service-alerts.yml")
SERVICE_ALERT_RULE_TESTS = package_path(__name__, "service-alerts.test.yml")
