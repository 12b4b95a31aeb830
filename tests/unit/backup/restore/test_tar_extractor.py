"""The restore's tar extractor: a backup's two concatenated tars fed in arbitrary chunks, and broken streams."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cqox_platform.backup.restore.stream import ParallelFileWriter, StreamRestoreError, TarExtractor


def _tar(members: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _extract(tmp_path, stream: bytes, sizes: list[int]) -> TarExtractor:
    files = ParallelFileWriter()
    extractor = TarExtractor(tmp_path, "s3://b/k", files)
    try:
        pos, i = 0, 0
        while pos < len(stream):
            step = sizes[i % len(sizes)]
            extractor.feed(stream[pos : pos + step])
            pos, i = pos + step, i + 1
        extractor.finish()
        files.finish()
    finally:
        files.abandon()
    return extractor


@settings(max_examples=25, deadline=None)
@given(big=st.binary(min_size=0, max_size=300_000), sizes=st.lists(st.integers(1, 70_000), min_size=1, max_size=5))
def test_two_concatenated_tars_extract_whole_in_any_chunking(tmp_path_factory, big, sizes):
    root = tmp_path_factory.mktemp("pgdata")
    server = _tar(
        {
            "backup_label": b"START WAL LOCATION: 0/2000028\n",
            "base": None,
            "base/1/16384": big,
            "global": None,
            "global/pg_control": b"c" * 8192,
            "empty": b"",
        }
    )
    stream = server + _tar({"backup_manifest": b'{"Files": []}'})
    extractor = _extract(root, stream, sizes)
    assert (root / "base/1/16384").read_bytes() == big
    assert (root / "backup_label").read_bytes().startswith(b"START WAL")
    assert (root / "empty").read_bytes() == b""
    assert (root / "backup_manifest").read_bytes() == b'{"Files": []}'
    assert extractor.manifest == b'{"Files": []}'
    assert extractor.pg_control is not None and extractor.pg_control[1] == b"c" * 8192
    assert not (root / "global/pg_control").exists()  # written last, by the caller, after verification
    assert extractor.ledger.files["base/1/16384"][0] == len(big)


def test_a_corrupt_header_stops_the_restore_naming_the_object(tmp_path):
    stream = bytearray(_tar({"a": b"x" * 600, "b": b"y" * 10}))
    stream[512 + 1024 + 10] ^= 0xFF  # inside b's header, after a's header and data: its checksum fails
    with pytest.raises(StreamRestoreError, match="s3://b/k is not a valid tar stream"):
        _extract(tmp_path, bytes(stream), [4096])


def test_a_stream_ending_inside_a_member_is_truncated(tmp_path):
    stream = _tar({"a": b"x" * 5000})
    with pytest.raises(StreamRestoreError, match="ends inside a: the backup is truncated"):
        _extract(tmp_path, stream[:2000], [700])


def test_unsafe_paths_and_links_are_refused(tmp_path):
    with pytest.raises(StreamRestoreError, match="unsafe path"):
        _extract(tmp_path, _tar({"../escape": b"x"}), [512])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        link = tarfile.TarInfo("pg_wal")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc"
        tar.addfile(link)
    with pytest.raises(StreamRestoreError, match="never has"):
        _extract(tmp_path, buf.getvalue(), [512])
    assert not (tmp_path / "pg_wal").exists()
