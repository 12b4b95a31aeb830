"""The restored server's own settings: how it makes the restored files durable before replaying."""

from __future__ import annotations

import pytest

from cqox_platform.backup.restore.recovery import syncfs_reports_errors


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.18.44-fc-v1252", True),
        ("5.8.0", True),
        ("5.10.0-28-amd64", True),
        ("5.7.19", False),  # syncfs returned 0 whatever write-back met: the server keeps fsync
        ("4.19.0-26-amd64", False),
        ("not-a-release", False),
        ("", False),
    ],
)
def test_syncfs_is_used_only_where_it_reports_write_back_errors(release, expected):
    assert syncfs_reports_errors(release) is expected
