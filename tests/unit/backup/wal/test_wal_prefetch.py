"""WAL prefetch: which segments it plans across a timeline switch, what a spool file must say to be served."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from cqox_platform.backup.archive.wal_names import WAL_SEGMENT_SIZE, Segment, parse_history, timeline_ranges
from cqox_platform.backup.wal.prefetch_client import (
    PrefetchClient,
    PrefetchRefused,
    SegmentCheck,
    error_path,
    ready_path,
    record_path,
)
from cqox_platform.backup.wal.prefetcher import plan

SYSID = 7_300_000_000_000_000_001


def page(tli: int, segno: int, sysid: int = SYSID) -> bytes:
    return struct.pack("<HHIQI4xQII", 0xD110, 0x0002, tli, segno * WAL_SEGMENT_SIZE, 0, sysid, WAL_SEGMENT_SIZE, 8192)


class _Timelines:
    """Timeline 2 branched from 1 inside segment 0x14; the archive's latest timeline is 2."""

    def __init__(self, latest: int = 2) -> None:
        self.latest = latest

    def ranges_for(self, timeline: int):
        if self.latest == 2 and timeline in (1, 2):
            return timeline_ranges(2, parse_history("1\t0/14800000\tno recovery target specified\n"))
        return [(timeline, 0, 1 << 64)]


def test_plan_follows_the_history_file_onto_the_new_timeline():
    planned = plan("000000010000000000000011", 5, _Timelines())
    assert planned == [
        "000000010000000000000012",
        "000000010000000000000013",
        "000000020000000000000014",  # the switch segment: recovery reads the child's copy
        "000000020000000000000015",
        "000000020000000000000016",
    ]


def test_plan_stays_on_the_requested_timeline_when_recovery_is_not_on_the_newest_path():
    # Timeline 1 past the switch point: PostgreSQL is following timeline 1 (not 'latest'), so must the plan.
    assert plan("000000010000000000000015", 2, _Timelines()) == [
        "000000010000000000000016",
        "000000010000000000000017",
    ]


@pytest.mark.parametrize(
    ("name", "head", "problem"),
    [
        ("000000020000000000000015", page(2, 0x15), None),
        ("000000020000000000000014", page(1, 0x14), None),  # first segment of a timeline starts with the parent's
        ("000000010000000000000015", page(2, 0x15), "timeline 2"),
        ("000000020000000000000015", page(2, 0x16), "the name says"),
        ("000000020000000000000015", page(2, 0x15, sysid=1), "belongs to system 1"),
        ("000000020000000000000015", page(2, 0x15)[:20], "shorter"),
    ],
)
def test_a_segment_must_answer_its_name(name, head, problem):
    found = SegmentCheck(name, SYSID).problem(head)
    assert found is None if problem is None else problem in found


def _client(tmp_path) -> PrefetchClient:
    pgdata = tmp_path / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", SYSID) + b"\0" * 100)
    return PrefetchClient(tmp_path / "archiver.json", pgdata, None)


def _spool(client: PrefetchClient, name: str, body: bytes, *, record_name: str | None = None) -> None:
    ready_path(client.spool, name).parent.mkdir(parents=True, exist_ok=True)
    ready_path(client.spool, name).write_bytes(body)
    record = {"name": record_name or name, "bucket": "", "sha256": hashlib.sha256(body).hexdigest()}
    record_path(client.spool, name).write_text(json.dumps(record))


def test_a_verified_spool_file_is_handed_over_once(tmp_path):
    client = _client(tmp_path)
    name = Segment(2, 0x15).name
    body = page(2, 0x15) + b"x" * 4096
    _spool(client, name, body)
    assert client.serve(name, tmp_path / "RECOVERYXLOG") == len(body)
    assert (tmp_path / "RECOVERYXLOG").read_bytes() == body
    assert client.serve(name, tmp_path / "again") is None  # claimed: the next request fetches directly


def test_a_spool_file_changed_since_verification_or_recorded_for_another_name_is_not_served(tmp_path):
    client = _client(tmp_path)
    name = Segment(2, 0x15).name
    _spool(client, name, page(2, 0x15) + b"x" * 10, record_name=Segment(1, 0x15).name)
    assert client.serve(name, tmp_path / "a") is None
    _spool(client, name, page(2, 0x15) + b"x" * 10)
    ready_path(client.spool, name).write_bytes(page(2, 0x15) + b"y" * 10)
    assert client.serve(name, tmp_path / "b") is None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_segment_the_prefetcher_found_unusable_is_refused_not_missing(tmp_path):
    client = _client(tmp_path)
    name = Segment(1, 0x32).name
    error_path(client.spool, name).parent.mkdir(parents=True)
    error_path(client.spool, name).write_text(f"{name} failed verification: chunk 0 failed authentication")
    with pytest.raises(PrefetchRefused, match="failed authentication"):
        client.serve(name, tmp_path / "RECOVERYXLOG")
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_a_verified_file_whose_header_names_another_timeline_is_refused(tmp_path):
    client = _client(tmp_path)
    name = Segment(1, 0x15).name
    _spool(client, name, page(3, 0x15) + b"x" * 10)
    with pytest.raises(PrefetchRefused, match="timeline 3"):
        client.serve(name, tmp_path / "RECOVERYXLOG")
    assert not (tmp_path / "RECOVERYXLOG").exists()


def _run_restore_command(command: str, name: str, cwd):
    import subprocess

    line = command.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG")
    return subprocess.run(["/bin/sh", "-c", line], cwd=cwd, capture_output=True, text=True)


def test_posix_cksum_matches_coreutils_and_differs_for_one_changed_byte():
    """The shell hand-over compares ``cksum`` output with what the prefetcher computed over the verified bytes:
    a sha256sum per 16 MiB segment cost ~36 ms on replay's critical path, cksum (CRC with pclmul) ~4 ms."""
    import subprocess

    from cqox_platform.backup.wal.prefetch_client import posix_cksum

    body = bytes(range(256)) * 4096
    coreutils = subprocess.run(["cksum"], input=body, capture_output=True, check=True).stdout.decode().strip()
    assert posix_cksum(body) == coreutils
    assert posix_cksum(body[:-1] + b"\x00") != coreutils
    assert posix_cksum(b"") == "4294967295 0"


def test_the_shell_hands_over_a_verified_prefetched_segment_without_the_cli(tmp_path):
    from cqox_platform.backup.wal.prefetch_client import fast_restore_command, posix_cksum

    spool, pgdata = tmp_path / "spool", tmp_path / "pgdata"
    (spool / "ready").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir(parents=True)
    name, body = "000000010000000000000007", b"\x11" * 4096
    (spool / "ready" / name).write_bytes(body)
    (spool / "ready" / f"{name}.json").write_text("{}")
    (spool / "ready" / f"{name}.cksum").write_text(posix_cksum(body) + "\n")
    command = fast_restore_command(spool, "exit 7")

    done = _run_restore_command(command, name, pgdata)
    assert done.returncode == 0, done.stderr
    assert (pgdata / "pg_wal" / "RECOVERYXLOG").read_bytes() == body
    assert not (spool / "ready" / name).exists()  # consumed: the prefetcher learns where replay is from that
    assert not (spool / "want").exists()  # two programs per segment (cksum, mv), nothing else


def test_the_prefetcher_learns_where_replay_is_from_what_left_its_spool(tmp_path):
    from cqox_platform.backup.wal.prefetcher import Prefetcher

    pgdata = tmp_path / "pgdata"
    _restored(pgdata, SYSID)
    prefetcher = Prefetcher(None, None, tmp_path / "spool", pgdata, None, 8, 1, print)  # no fetch in this test
    try:
        names = [f"0000000100000000000000{n:02X}" for n in range(0x10, 0x14)]
        for name in names:
            (tmp_path / "spool" / "ready" / name).write_bytes(b"x")
            prefetcher.readied.add(name)
        assert prefetcher.consumed() is None
        for name in names[:3]:  # the shell moved three into pg_wal, one after the other
            (tmp_path / "spool" / "ready" / name).unlink()
        assert prefetcher.consumed() == names[2]
        assert prefetcher.consumed() is None  # each hand-over is reported once
        prefetcher._prune({names[3]})  # pruned files were not taken by recovery
        assert prefetcher.readied == {names[3]}
    finally:
        prefetcher.close()


def test_the_shell_leaves_a_changed_or_missing_segment_to_the_cli(tmp_path):
    from cqox_platform.backup.wal.prefetch_client import fast_restore_command, posix_cksum

    spool, pgdata = tmp_path / "spool", tmp_path / "pgdata"
    (spool / "ready").mkdir(parents=True)
    (pgdata / "pg_wal").mkdir(parents=True)
    name = "000000010000000000000008"
    (spool / "ready" / name).write_bytes(b"\x22" * 4096)  # changed on disk after it was verified
    (spool / "ready" / f"{name}.cksum").write_text(posix_cksum(b"\x21" * 4096) + "\n")
    command = fast_restore_command(spool, "exit 7")

    changed = _run_restore_command(command, name, pgdata)
    missing = _run_restore_command(command, "000000010000000000000009", pgdata)
    assert changed.returncode == missing.returncode == 7  # the CLI decides: it refetches, or exits 1 / 255
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists()
    assert (spool / "ready" / name).exists()


def _ready_dir_of(command: str):
    """The spool directory whose files a restore_command's shell hand-over serves."""
    import re
    from pathlib import Path

    return Path(re.search(r"\[ -f (\S+)/%f \]", command).group(1))


def _plant(ready, name: str, body: bytes) -> None:
    from cqox_platform.backup.wal.prefetch_client import posix_cksum

    ready.mkdir(parents=True, exist_ok=True)
    (ready / name).write_bytes(body)
    (ready / f"{name}.json").write_text("{}")
    (ready / f"{name}.cksum").write_text(posix_cksum(body) + "\n")


def _restored(pgdata, sysid: int) -> None:
    """A data directory as a restore leaves it: pg_control says which cluster it is."""
    (pgdata / "global").mkdir(parents=True, exist_ok=True)
    (pgdata / "pg_wal").mkdir(exist_ok=True)
    (pgdata / "global" / "pg_control").write_bytes(struct.pack("<Q", sysid) + b"\0" * 100)


def test_a_spool_left_by_a_restore_of_another_cluster_into_the_same_path_is_not_handed_over(tmp_path):
    from pathlib import Path

    from cqox_platform.backup.restore.recovery import restore_command_for

    pgdata, settings, cli = tmp_path / "pgdata", tmp_path / "archiver.json", Path("/bin/false")
    name = "000000010000000000000007"
    _restored(pgdata, 1234)  # a restore of cluster 1234, its prefetcher killed with a verified segment ready
    _plant(_ready_dir_of(restore_command_for(cli, settings, None, 8, pgdata)), name, page(1, 7, sysid=1234))
    _restored(pgdata, SYSID)  # the next restore into the same path is of another cluster
    command = restore_command_for(cli, settings, None, 8, pgdata)
    done = _run_restore_command(command, name, pgdata)
    assert not (pgdata / "pg_wal" / "RECOVERYXLOG").exists(), "served a segment of system 1234"
    assert done.returncode == 1  # the fallback (here /bin/false) decides: the archive, not the spool


def test_building_a_restore_command_clears_what_a_previous_replay_left_in_its_spool(tmp_path):
    from pathlib import Path

    from cqox_platform.backup.restore.recovery import restore_command_for

    pgdata, settings, cli = tmp_path / "pgdata", tmp_path / "archiver.json", Path("/bin/false")
    _restored(pgdata, SYSID)
    ready = _ready_dir_of(restore_command_for(cli, settings, None, 8, pgdata))
    _plant(ready, "000000020000000000000007", page(2, 7))  # another branch's replay of the same cluster
    (ready.parent / "want").write_text("000000020000000000000006")
    restore_command_for(cli, settings, None, 8, pgdata)  # the next restore, before its server starts
    assert not ready.exists() or not any(ready.iterdir())
    assert not (ready.parent / "want").exists()
