"""The data-key cache the WAL pusher uses so that a Vault outage shorter than its window costs no archiving.

A fake clock drives ages; the refresh thread is real (it only ever calls the inner provider)."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cqox_platform.crypto.key_cache import CachingKeyProvider, KeyCachePolicy
from cqox_platform.crypto.keys import DataKey
from cqox_platform.errors import CqoxError, VaultError


class Transit:
    """Issues numbered keys; ``sealed`` makes it refuse, as a sealed OpenBao does."""

    key_name = "cqox-backups"

    def __init__(self) -> None:
        self._n = itertools.count()
        self._lock = threading.Lock()
        self.sealed = False
        self.calls = 0

    def generate_data_key(self) -> DataKey:
        with self._lock:
            self.calls += 1
            if self.sealed:
                raise VaultError("Vault is sealed")
            n = next(self._n)
        return DataKey(n.to_bytes(32, "big"), f"vault:v1:{n:08d}", self.key_name)

    def unwrap(self, wrapped: str) -> bytes:
        return int(wrapped.split(":")[2]).to_bytes(32, "big")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the refresh thread did not act"
        time.sleep(0.01)


@pytest.fixture
def cache():
    made: list[CachingKeyProvider] = []

    def make(transit: Transit, policy: KeyCachePolicy, clock: Clock) -> CachingKeyProvider:
        provider = CachingKeyProvider(transit, policy, clock=clock, poll=0.01)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


def test_one_key_seals_many_segments_and_is_marked_shared(cache):
    transit, clock = Transit(), Clock()
    provider = cache(transit, KeyCachePolicy(max_age=900, max_uses=1000), clock)
    with ThreadPoolExecutor(4) as pool:
        keys = list(pool.map(lambda _: provider.generate_data_key(), range(200)))
    assert len({k.wrapped for k in keys}) == 1  # no refresh is due: one Vault key for all 200
    assert all(k.shared for k in keys)  # so the format derives a key per object
    assert provider.unwrap("vault:v1:00000007") == (7).to_bytes(32, "big")


def test_a_sealed_vault_costs_nothing_until_the_window_ends_then_the_segment_fails_naming_why(cache):
    transit, clock = Transit(), Clock()
    provider = cache(transit, KeyCachePolicy(max_age=900, max_uses=1000), clock)
    first = provider.generate_data_key()
    transit.sealed = True
    clock.now += 600  # refresh due (after 60 s) but Vault refuses: the cached key goes on
    _wait_for(lambda: transit.calls >= 2)
    assert provider.generate_data_key().wrapped == first.wrapped
    assert "sealed" in provider.status()["last_refresh_error"]
    clock.now += 301  # 901 s old: past the window
    with pytest.raises(CqoxError, match=r"older than 900 s.*sealed"):
        provider.generate_data_key()
    transit.sealed = False  # Vault back: the next segment gets a new key at once
    assert provider.generate_data_key().wrapped != first.wrapped


def test_the_use_limit_ends_the_window_too(cache):
    transit, clock = Transit(), Clock()
    provider = cache(transit, KeyCachePolicy(max_age=900, max_uses=10), clock)
    transit.sealed = True
    with pytest.raises(CqoxError, match="sealed"):  # nothing cached yet and Vault refuses: fails at once
        provider.generate_data_key()
    transit.sealed = False
    first = provider.generate_data_key()
    transit.sealed = True
    for _ in range(9):
        assert provider.generate_data_key().wrapped == first.wrapped
    with pytest.raises(CqoxError, match="sealed 10 segments"):
        provider.generate_data_key()


def test_while_vault_answers_the_key_is_replaced_every_refresh_interval(cache):
    """A rotated Transit key is picked up within ``refresh_after``; an outage starts with the window nearly whole."""
    transit, clock = Transit(), Clock()
    policy = KeyCachePolicy(max_age=900, max_uses=1000)
    provider = cache(transit, policy, clock)
    first = provider.generate_data_key()
    clock.now += policy.refresh_after + 1
    _wait_for(lambda: provider.generate_data_key().wrapped != first.wrapped)
    assert provider.status()["last_refresh_error"] is None


def test_half_the_uses_gone_starts_a_refresh(cache):
    transit, clock = Transit(), Clock()
    provider = cache(transit, KeyCachePolicy(max_age=900, max_uses=10), clock)
    first = provider.generate_data_key()
    for _ in range(4):
        assert provider.generate_data_key().wrapped == first.wrapped  # under half: the cached key
    provider.generate_data_key()  # the fifth of ten: half gone
    _wait_for(lambda: provider.generate_data_key().wrapped != first.wrapped)
    assert provider.status()["last_refresh_error"] is None


def test_the_policy_is_checked_and_off_means_a_key_per_object():
    assert KeyCachePolicy(max_age=0, max_uses=4096).enabled is False
    assert KeyCachePolicy(max_age=900, max_uses=1).enabled is False
    assert KeyCachePolicy().enabled and KeyCachePolicy().max_age == 900 and KeyCachePolicy().max_uses == 4096
    bad_values = (({"max_age": -1}, "max_age"), ({"max_age": float("nan")}, "max_age"), ({"max_uses": 0}, "max_uses"))
    for bad, field in bad_values:
        with pytest.raises(ValueError, match=field):
            KeyCachePolicy(**bad)
    with pytest.raises(ValueError, match="max_age"):
        KeyCachePolicy(max_age=86401)


def test_close_drops_the_plaintext_key(cache):
    transit, clock = Transit(), Clock()
    provider = cache(transit, KeyCachePolicy(), clock)
    provider.generate_data_key()
    provider.close()
    assert provider.status()["cached"] is False
    with pytest.raises(CqoxError, match="closed"):
        provider.generate_data_key()
