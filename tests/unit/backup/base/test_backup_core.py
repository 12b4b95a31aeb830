"""Pure parts of the backup code: the tar sniffer, the Pushgateway format, backup labels."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from cqox_platform.backup.archive.records import BackupRecord
from cqox_platform.backup.base.create import parse_backup_label
from cqox_platform.backup.base.tarsniff import TarSniffer
from tests.helpers import backup_record


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@settings(max_examples=40)
@given(st.binary(max_size=5000), st.binary(max_size=3000), st.integers(min_value=1, max_value=2000))
def test_tar_sniffer_passes_bytes_through_and_captures_members(other, label, read_size):
    stream = _tar({"base/1/1234": other, "backup_label": label, "global/pg_control": b"x" * 700})
    sniffer = TarSniffer(io.BytesIO(stream), {"backup_label", "backup_manifest"})
    out = bytearray()
    while chunk := sniffer.read(read_size):
        out += chunk
    assert bytes(out) == stream
    assert sniffer.captured == {"backup_label": label}


def test_backup_label_parses():
    label = parse_backup_label(
        "START WAL LOCATION: 0/2D000028 (file 00000001000000000000002D)\nCHECKPOINT LOCATION: 0/2D000060\n"
        "BACKUP METHOD: streamed\nSTART TIME: 2026-11-26 06:21:48 UTC\nLABEL: 20261126T062148Z\nSTART TIMELINE: 1\n"
    )
    assert label["START TIMELINE"] == "1" and label["START WAL LOCATION"].startswith("0/2D000028")


# Retention plans are table-tested in test_retention.py. The three tests that stood here asserted the old
# plan, including that a backup older than the window is deleted when none is verified (issue 13 item 1: the
# newest backups now always stay).


def test_backup_record_json_round_trips_and_ignores_unknown_fields():
    record = replace(backup_record("20261125T030000Z"), extra={"a": 1})
    data = json.loads(record.to_json())
    data["future_field"] = "ignored"
    assert BackupRecord.from_json(json.dumps(data), where="test") == record


def test_entrypoint_fast_path_only_takes_exact_async_pushes():
    from cqox_platform.cli.entrypoint import _fast_async_push

    assert _fast_async_push(["wal-push", "p", "--config", "c"]) is None  # sync: the full CLI
    assert _fast_async_push(["wal-push", "--async", "--help"]) is None
    assert _fast_async_push(["wal-push", "p", "--async", "--config=c"]) is None
    assert _fast_async_push(["stack", "up"]) is None
