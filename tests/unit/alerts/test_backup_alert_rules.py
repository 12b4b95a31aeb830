"""The backup alert rules' promtool unit tests, and that they catch a page that would come too late."""

from __future__ import annotations

import pytest

from cqox_platform.alerts import BACKUP_ALERT_RULE_TESTS, BACKUP_ALERT_RULES
from cqox_platform.alerts.rules import AlertRulesError, check_and_test


def test_the_backup_rules_pass_their_promtool_tests():
    checked = check_and_test(BACKUP_ALERT_RULES, BACKUP_ALERT_RULE_TESTS)
    assert "SUCCESS" in checked.check_output and "SUCCESS" in checked.test_output


@pytest.mark.parametrize(
    ("original", "broken"),
    [
        (
            'cqox_recovery_window_latest_timestamp_seconds{copy="dr"} > 3600',
            'cqox_recovery_window_latest_timestamp_seconds{copy="dr"} > 7200',
        ),
        ('{copy="dr"} > 3600', "> 3600"),  # every copy instead of the DR copy
    ],
)
def test_the_dr_window_tests_fail_when_the_rule_pages_late_or_on_the_wrong_copy(tmp_path, original, broken):
    text = BACKUP_ALERT_RULES.read_text()
    assert original in text
    (tmp_path / "backup-alerts.yml").write_text(text.replace(original, broken))
    tests = tmp_path / "backup-alerts.test.yml"
    tests.write_text(BACKUP_ALERT_RULE_TESTS.read_text())
    with pytest.raises(AlertRulesError, match="CqoxDrRecoveryWindowBehindRpo"):
        check_and_test(tmp_path / "backup-alerts.yml", tests)
