"""Prometheus alert rules the platform installs, shipped as package data (see ``cqox_platform.package_data``)."""

from cqox_platform.package_data import package_path

# Alerts on the backup gauges (WAL lag, base backup and drill age); checked with promtool and installed by the
# backup_alert_rules asset.
BACKUP_ALERT_RULES = package_path(__name__, "backup-alerts.yml")
