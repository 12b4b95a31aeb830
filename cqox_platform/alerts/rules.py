"""Alert rule files the platform ships, checked with ``promtool check rules`` and unit-tested with
``promtool test rules`` before any Prometheus loads them (the SLO rules get the same in ``slo.rules``)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cqox_platform.errors import AlertingError


class AlertRulesError(AlertingError):
    """promtool rejected a rule file or one of its unit tests failed."""


@dataclass(frozen=True)
class CheckedRules:
    check_output: str
    test_output: str


def check_and_test(rule_file: Path, test_file: Path | None) -> CheckedRules:
    checked = subprocess.run(["promtool", "check", "rules", str(rule_file)], capture_output=True, text=True)
    if checked.returncode != 0:
        raise AlertRulesError(f"promtool check rules {rule_file} failed:\n{checked.stdout}{checked.stderr}")
    tested_out = ""
    if test_file is not None:
        # promtool resolves the test file's rule_files relative to the test file.
        tested = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True)
        if tested.returncode != 0:
            raise AlertRulesError(f"promtool test rules {test_file} failed:\n{tested.stdout}{tested.stderr}")
        tested_out = tested.stdout.strip()
    return CheckedRules(checked.stdout.strip(), tested_out)
