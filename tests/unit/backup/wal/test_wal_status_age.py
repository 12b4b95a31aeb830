"""The newest segment's age, which the RPO in seconds is: never negative when S3's clock runs ahead of ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cqox_platform.backup.archive.wal_names import Segment
from cqox_platform.backup.wal.status import _age


class _AheadClock:
    """An archive whose S3 stamps objects two seconds in our future (skew, or a segment stored just now)."""

    def wal_manifest_key(self, name: str) -> str:
        return f"wal/{name}.manifest.json"

    def head(self, key: str) -> dict:
        return {"LastModified": datetime.now(UTC) + timedelta(seconds=2)}


def test_a_segment_stamped_in_our_future_is_zero_seconds_old_not_negative() -> None:
    assert _age(_AheadClock(), Segment(1, 9)) == 0.0
