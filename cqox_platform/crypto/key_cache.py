"""A bounded data-key cache, so that a Vault outage shorter than its window costs a writer nothing.

The WAL pusher seals every segment with a Vault data key. With a fresh key per segment, a sealed OpenBao stopped
archiving at once (a 3-minute seal failed ``archive_command`` 37 times, and the RPO grew with the outage). This
is the AWS Encryption SDK's data-key caching, adapted:

- one key serves at most ``max_uses`` objects and for at most ``max_age`` seconds after it was asked for;
- its plaintext lives in this process's memory only (dropped by ``close``, never written anywhere);
- it is handed out marked ``shared``, so the format derives a key per object from it (flag ``DERIVED_KEY`` in
  ``crypto.stream``) and sharing never repeats a (key, nonce) pair;
- while Vault answers, a background thread replaces it every ``refresh_after`` seconds (or once half its uses are
  gone): a rotated Transit key is picked up within a minute, and an outage starts with nearly the whole window
  left;
- when the window ends during an outage the next object fails, naming the key's age or uses and Vault's error,
  exactly as without a cache (PostgreSQL keeps the WAL and retries).

The cost: a leaked plaintext key exposes up to ``max_uses`` objects (or ``max_age`` worth of them) instead of one.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cqox_platform.crypto.keys import DataKey, DataKeyProvider
from cqox_platform.errors import CqoxError

#: A day: a longer window would outlive the Transit key rotation the platform schedules.
MAX_WINDOW_SECONDS = 86400.0
REFRESH_EVERY = 60.0


class KeyCacheExhaustedError(CqoxError):
    """The cached data key's window ended and Vault did not issue a new one."""


@dataclass(frozen=True)
class KeyCachePolicy:
    """How long and for how many objects one data key may serve (the archiver settings carry it)."""

    max_age: float = 900.0
    max_uses: int = 4096

    def __post_init__(self) -> None:
        if not (isinstance(self.max_age, int | float) and math.isfinite(self.max_age)):
            raise ValueError(f"data key cache max_age must be a number of seconds, got {self.max_age!r}")
        if not 0 <= self.max_age <= MAX_WINDOW_SECONDS:
            raise ValueError(f"data key cache max_age must be 0..{MAX_WINDOW_SECONDS:.0f} s, got {self.max_age}")
        if not isinstance(self.max_uses, int) or isinstance(self.max_uses, bool) or self.max_uses < 1:
            raise ValueError(f"data key cache max_uses must be an integer >= 1, got {self.max_uses!r}")

    @property
    def enabled(self) -> bool:
        """``max_age`` 0 or ``max_uses`` 1 means one fresh key per object (no key is shared)."""
        return self.max_age > 0 and self.max_uses > 1

    @property
    def refresh_after(self) -> float:
        """How old the key may get while Vault answers: a minute, or a quarter of a short window."""
        return min(REFRESH_EVERY, self.max_age / 4)


@dataclass
class _Cached:
    key: DataKey
    born: float
    uses: int = 0


class CachingKeyProvider:
    """A ``DataKeyProvider`` handing out one shared key within ``policy``; thread-safe (the pusher's workers)."""

    def __init__(
        self,
        inner: DataKeyProvider,
        policy: KeyCachePolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda _message: None,
        poll: float = 1.0,
    ) -> None:
        self.inner, self.key_name, self.policy = inner, inner.key_name, policy
        self._clock, self._log, self._poll = clock, log, poll
        self._lock = threading.Lock()
        self._fetching = threading.Lock()  # one Vault request at a time: concurrent cold starts share its key
        self._current: _Cached | None = None
        self._last_error: str | None = None
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="data-key-cache", daemon=True)
        self._thread.start()

    def generate_data_key(self) -> DataKey:
        """The cached key while it is within the window; otherwise a new one from Vault, or an error saying both."""
        if self._closed.is_set():
            raise KeyCacheExhaustedError("the data key cache is closed.")
        with self._lock:
            cached, now = self._current, self._clock()
            why = self._unusable(cached, now)
            if cached is not None and why is None:
                cached.uses += 1
                if cached.uses * 2 >= self.policy.max_uses:
                    self._wake.set()
                return cached.key
        with self._fetching:
            with self._lock:  # another caller may have fetched while this one waited
                cached = self._current
                if cached is not None and self._unusable(cached, self._clock()) is None:
                    cached.uses += 1
                    return cached.key
            try:
                fresh = self._fetch()
            except CqoxError as exc:
                raise KeyCacheExhaustedError(
                    f"no data key: {why}, and Vault did not issue a new one: {exc}. PostgreSQL keeps the WAL and "
                    f"retries; archiving resumes when Vault answers."
                ) from None
        with self._lock:
            fresh.uses += 1
            return fresh.key

    def unwrap(self, wrapped: str) -> bytes:
        return self.inner.unwrap(wrapped)

    def status(self) -> dict[str, Any]:
        """What the cache holds, for logs and tests: never the key itself."""
        with self._lock:
            cached = self._current
            return {
                "cached": cached is not None,
                "age_seconds": None if cached is None else self._clock() - cached.born,
                "uses": None if cached is None else cached.uses,
                "last_refresh_error": self._last_error,
            }

    def close(self) -> None:
        """Stop refreshing and drop the plaintext key."""
        self._closed.set()
        self._wake.set()
        with self._lock:
            self._current = None

    def _unusable(self, cached: _Cached | None, now: float) -> str | None:
        if cached is None:
            return "none cached yet"
        if now - cached.born > self.policy.max_age:
            return f"the cached one is older than {self.policy.max_age:.0f} s"
        if cached.uses >= self.policy.max_uses:
            return f"the cached one sealed {cached.uses} segments, its limit"
        return None

    def _fetch(self) -> _Cached:
        asked_at = self._clock()  # the window counts from the request: never longer than the policy says
        key = self.inner.generate_data_key()
        fresh = _Cached(dataclasses.replace(key, shared=True), asked_at)
        with self._lock:
            if self._closed.is_set():
                raise KeyCacheExhaustedError("the data key cache is closed.")
            self._current, self._last_error = fresh, None
        return fresh

    def _refresh_due(self) -> bool:
        with self._lock:
            cached = self._current
            if cached is None:
                return False  # nothing to keep warm until the first object asks
            return self._clock() - cached.born >= self.policy.refresh_after or cached.uses * 2 >= self.policy.max_uses

    def _refresh_loop(self) -> None:
        while not self._closed.is_set():
            if self._refresh_due():
                try:
                    with self._fetching:
                        self._fetch()
                except CqoxError as exc:
                    with self._lock:
                        first = self._last_error is None
                        self._last_error = str(exc)
                    if first:
                        self._log(
                            f"Vault did not issue a new data key ({exc}); the cached one serves until it is "
                            f"{self.policy.max_age:.0f} s old or has sealed {self.policy.max_uses} segments"
                        )
            self._wake.wait(self._poll)
            self._wake.clear()
