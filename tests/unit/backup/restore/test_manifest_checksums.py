"""Restored files are checked against backup_manifest's CRC32C while they stream (issue 15: one pass, not two)."""

from __future__ import annotations

import json

import pytest

from cqox_platform.backup.restore.checksums import ChecksumLedger, ChecksumMismatchError, crc32c_hex


def _manifest(files: dict[str, bytes], algorithm: str = "CRC32C") -> bytes:
    entries = []
    for path, data in files.items():
        ledger = ChecksumLedger()
        ledger.start(path)
        ledger.add(path, data)
        entries.append(
            {
                "Path": path,
                "Size": len(data),
                "Checksum-Algorithm": algorithm,
                "Checksum": crc32c_hex(ledger.files[path][1]),
            }
        )
    return json.dumps({"PostgreSQL-Backup-Manifest-Version": 1, "Files": entries}).encode()


def _ledger(files: dict[str, bytes], chunk: int = 3) -> ChecksumLedger:
    ledger = ChecksumLedger()
    for path, data in files.items():
        ledger.start(path)
        for i in range(0, len(data), chunk):
            ledger.add(path, data[i : i + chunk])
    return ledger


def test_the_crc_is_written_the_way_postgresql_writes_it():
    # CRC-32C("123456789") is 0xE3069283; PostgreSQL's manifest holds its bytes in little-endian order.
    ledger = _ledger({"f": b"123456789"})
    assert crc32c_hex(ledger.files["f"][1]) == "839206e3"


def test_files_streamed_in_chunks_match_their_manifest():
    files = {"base/1/1259": b"x" * 10_000, "PG_VERSION": b"15\n", "global/pg_control": b"\x01" * 8192}
    assert _ledger(files).verify(_manifest(files), "s3://b/k") is True


@pytest.mark.parametrize(
    ("restored", "problem"),
    [
        ({"PG_VERSION": b"15\n", "base/1/1259": b"y" * 100}, "base/1/1259: CRC32C"),
        ({"PG_VERSION": b"15\n", "base/1/1259": b"x" * 99}, "base/1/1259: 99 bytes, the manifest says 100"),
        ({"PG_VERSION": b"15\n"}, "base/1/1259: in the manifest, not in the backup"),
    ],
)
def test_a_corrupt_short_or_missing_file_is_named(restored, problem):
    manifest = _manifest({"PG_VERSION": b"15\n", "base/1/1259": b"x" * 100})
    with pytest.raises(ChecksumMismatchError, match="s3://b/k does not match its backup_manifest") as raised:
        _ledger(restored).verify(manifest, "s3://b/k")
    assert problem in str(raised.value)


def test_another_algorithm_is_left_to_pg_verifybackup_and_a_broken_manifest_is_an_error():
    files = {"PG_VERSION": b"15\n"}
    assert _ledger(files).verify(_manifest(files, algorithm="SHA256"), "s3://b/k") is False
    with pytest.raises(ChecksumMismatchError, match="does not parse"):
        _ledger(files).verify(b"{not json", "s3://b/k")


def test_the_parallel_writer_writes_every_chunk_in_place_and_reports_a_write_error(tmp_path):
    from cqox_platform.backup.restore.stream import ParallelFileWriter

    chunks = [bytes([i]) * (1 << 16) for i in range(40)]
    writer = ParallelFileWriter(writers=2, in_flight=4)
    try:
        writer.write(tmp_path / "base" / "1" / "1259", 0o600, chunks)
        writer.write(tmp_path / "PG_VERSION", 0o644, [b"15\n"])
        writer.finish()
    finally:
        writer.abandon()
    assert (tmp_path / "base" / "1" / "1259").read_bytes() == b"".join(chunks)
    assert (tmp_path / "PG_VERSION").stat().st_mode & 0o777 == 0o600  # owner-only, whatever the tar said


def test_a_write_error_midway_is_raised_and_every_file_is_closed(tmp_path, monkeypatch):
    import errno
    import os

    from cqox_platform.backup.restore import stream as restore_stream

    calls = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(restore_stream.os, "pwrite", pwrite)
    writer = restore_stream.ParallelFileWriter(writers=2, in_flight=4)
    try:
        writer.write(tmp_path / "a", 0o600, [b"x" * 10] * 8)
        with pytest.raises(OSError, match="No space left"):
            writer.finish()
    finally:
        writer.abandon()
    assert not writer._open  # every descriptor closed, none left for a later close to hit a reused number
