"""The asynchronous WAL pusher uses one data key per object, as docs/encryption-format.md says (issue 13, item 12)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

from cqox_platform.backup.wal import pusher as wal_async
from cqox_platform.crypto.keys import DataKey


class CountingProvider:
    key_name = "cqox-backups"

    def __init__(self) -> None:
        self._n = itertools.count()
        self._lock = threading.Lock()

    def generate_data_key(self) -> DataKey:
        with self._lock:
            n = next(self._n)
        return DataKey(n.to_bytes(32, "big"), f"vault:v1:{n:08d}", self.key_name)

    def unwrap(self, wrapped: str) -> bytes:
        return int(wrapped.split(":")[2]).to_bytes(32, "big")


def test_the_pushers_key_provider_never_hands_out_a_key_twice():
    provider = wal_async.pusher_key_provider(CountingProvider())
    try:
        with ThreadPoolExecutor(4) as pool:
            keys = list(pool.map(lambda _: provider.generate_data_key(), range(300)))
    finally:
        getattr(provider, "close", lambda: None)()
    assert len({k.wrapped for k in keys}) == 300
    assert len({k.plaintext for k in keys}) == 300


def test_stale_keys_are_dropped_vault_errors_reach_the_caller_and_unwrap_is_never_cached():
    import time

    import pytest

    from cqox_platform.errors import VaultError

    inner = CountingProvider()
    provider = wal_async.PrefetchingKeyProvider(inner, depth=2, max_age=0.05)
    try:
        time.sleep(0.2)  # the pool filled, then went stale
        key = provider.generate_data_key()
        assert int(key.wrapped.split(":")[2]) >= 2  # the first, stale keys were not used
        assert provider.unwrap("vault:v1:00000007") == (7).to_bytes(32, "big")
    finally:
        provider.close()

    class Sealed(CountingProvider):
        def generate_data_key(self) -> DataKey:
            raise VaultError("Vault is sealed")

    sealed = wal_async.PrefetchingKeyProvider(Sealed())
    try:
        with pytest.raises(VaultError, match="sealed"):
            sealed.generate_data_key()
    finally:
        sealed.close()


def test_the_pusher_logs_in_again_when_the_archiver_settings_file_changes(tmp_path, monkeypatch):
    """An operator (or an alert drill) changing the archiver settings must not wait for the pusher to idle out."""
    import time
    from types import SimpleNamespace

    from cqox_platform.backup.wal.segment import PushResult

    settings_file = tmp_path / "archiver.json"
    settings_file.write_text('{"s3_endpoint": "https://s3-a"}')
    pgdata = tmp_path / "pgdata"
    status = pgdata / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    loaded: list[str] = []
    pushed: list[tuple[str, str]] = []

    def connect():
        loaded.append(settings_file.read_text())
        return SimpleNamespace(s3=SimpleNamespace(endpoint=loaded[-1]), bucket="b", provider=None, key_cache=None)

    def push_and_mark(archive, provider, spool, pgdata_, name, log):
        pushed.append((name, archive.endpoint))
        (status / f"{name}.ready").rename(status / f"{name}.done")
        return PushResult(name, True, 1, 1, 0.0)

    monkeypatch.setattr(wal_async, "Archive", lambda s3, bucket, system_id: SimpleNamespace(endpoint=s3.endpoint))
    monkeypatch.setattr(wal_async, "system_identifier", lambda pgdata_: "1")
    monkeypatch.setattr(wal_async, "pusher_key_provider", lambda *a, **k: SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(wal_async, "push_and_mark", push_and_mark)

    daemon = threading.Thread(
        target=wal_async.run_daemon, args=(settings_file, pgdata, connect, 3.0), kwargs={"log": print}
    )
    (status / "000000010000000000000001.ready").touch()
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while len(pushed) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        settings_file.write_text('{"s3_endpoint": "https://s3-b"}')  # the endpoint moved
        (status / "000000010000000000000002.ready").touch()
        while len(pushed) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.join(timeout=15)
    assert [endpoint for _name, endpoint in pushed] == [
        '{"s3_endpoint": "https://s3-a"}',
        '{"s3_endpoint": "https://s3-b"}',
    ]
    assert len(loaded) == 2


def test_the_pusher_caches_a_key_within_the_settings_window_and_each_segment_derives_its_own():
    """A Vault outage shorter than the window must cost no archiving: the pusher shares one key (marked shared,
    so each segment's chunks get a key of their own); with the window off it is one fresh key per segment."""
    import io

    from cqox_platform.crypto.envelope import encrypt_to
    from cqox_platform.crypto.key_cache import KeyCachePolicy
    from cqox_platform.crypto.stream import DERIVED_KEY, read_header

    cached = wal_async.pusher_key_provider(CountingProvider(), KeyCachePolicy(max_age=900, max_uses=100))
    off = wal_async.pusher_key_provider(CountingProvider(), KeyCachePolicy(max_age=0))
    try:
        keys = [cached.generate_data_key() for _ in range(5)]
        assert len({k.wrapped for k in keys}) == 1 and keys[0].shared
        sealed = io.BytesIO()
        encrypt_to(io.BytesIO(b"wal" * 100), sealed, cached, object_id="wal/000000010000000000000001")
        assert read_header(io.BytesIO(sealed.getvalue())).flags == DERIVED_KEY
        fresh = [off.generate_data_key() for _ in range(5)]
        assert len({k.wrapped for k in fresh}) == 5 and not any(k.shared for k in fresh)
    finally:
        cached.close()
        off.close()
