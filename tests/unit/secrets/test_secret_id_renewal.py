"""When vault_config replaces an AppRole secret-id (issue 13, item 11 d): fail closed, renew at half-life."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cqox_platform.errors import VaultError
from cqox_platform.secrets.vault_setup import AppRoleLimits, secret_id_needs_renewal

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = AppRoleLimits(secret_id_ttl="720h", bound_cidrs=("127.0.0.1/32",))


def _lookup(hours_left: float | None, cidrs=("127.0.0.1/32",)) -> dict:
    expires = "0001-01-01T00:00:00Z" if hours_left is None else (NOW + timedelta(hours=hours_left)).isoformat()
    return {"expiration_time": expires, "cidr_list": list(cidrs)}


@pytest.mark.parametrize(
    ("lookup", "renew"),
    [
        (_lookup(700), None),
        (_lookup(361), None),
        (_lookup(359), "less than half"),
        (_lookup(-1), "less than half"),
        (_lookup(None), "never expires"),  # issued before secret-ids had a lifetime
        ({"expiration_time": "", "cidr_list": ["127.0.0.1/32"]}, "never expires"),
        (_lookup(700, cidrs=()), "CIDR binding"),
        (_lookup(700, cidrs=("0.0.0.0/0",)), "CIDR binding"),
        (None, "does not know"),
        ({}, "does not know"),
        (_lookup(720 + 30 / 3600), None),  # a fresh one may read a few seconds over its lifetime ahead
        (_lookup(800), "outlives the configured lifetime"),  # issued before the lifetime was shortened
    ],
)
def test_secret_id_renewal_decision(lookup, renew):
    reason = secret_id_needs_renewal(lookup, LIMITS, NOW.timestamp())
    assert (reason is None) if renew is None else (renew in reason)


@pytest.mark.parametrize(("text", "seconds"), [("720h", 2592000), ("30d", 2592000), ("90m", 5400), ("3600", 3600)])
def test_secret_id_ttl_parses(text, seconds):
    assert AppRoleLimits(secret_id_ttl=text).ttl_seconds == seconds


@pytest.mark.parametrize("text", ["", "0", "forever", "-1h", "1w"])
def test_secret_id_ttl_must_be_a_positive_duration(text):
    with pytest.raises(VaultError):
        _ = AppRoleLimits(secret_id_ttl=text).ttl_seconds


def test_a_bare_address_is_the_same_binding_as_its_slash_32():
    assert secret_id_needs_renewal(_lookup(700, cidrs=("127.0.0.1",)), LIMITS, NOW.timestamp()) is None


SHORT = AppRoleLimits(secret_id_ttl="300s", bound_cidrs=("127.0.0.1/32",))


def test_shortening_the_lifetime_replaces_a_secret_id_issued_under_the_old_one():
    # 700 h left of a 720 h secret-id, and the setting now says 300 s.
    assert "outlives" in secret_id_needs_renewal(_lookup(700), SHORT, NOW.timestamp())
    assert secret_id_needs_renewal(_lookup(200 / 3600), SHORT, NOW.timestamp()) is None
    assert "less than half" in secret_id_needs_renewal(_lookup(140 / 3600), SHORT, NOW.timestamp())


def _recorded(left: float, ttl: float = 300.0, role: str = "cqox-platform") -> dict:
    return {role: {"expires_at": NOW.timestamp() + left, "ttl_seconds": ttl}}


@pytest.mark.parametrize(
    ("recorded", "due"),
    [
        (_recorded(200), None),
        (_recorded(151), None),
        (_recorded(149), "less than half"),
        (_recorded(-5), "less than half"),
        ({**_recorded(200), **_recorded(100, role="cqox-wal-archiver")}, "cqox-wal-archiver"),
        (_recorded(200, ttl=2592000), "lifetime"),  # the setting changed since the last run
        (None, "no vault_config run"),
        ({}, "no vault_config run"),
        ({"cqox-platform": {"expires_at": "soon"}}, "unreadable"),
    ],
)
def test_the_renewal_sensor_asks_for_vault_config_on_the_same_terms_vault_config_renews(recorded, due):
    from cqox_platform.secrets.renewal import renewal_due

    reason = renewal_due(recorded, ttl_seconds=300, now=NOW.timestamp())
    assert (reason is None) if due is None else (due in reason), reason


def test_a_failed_renewal_is_retried_soon_but_not_in_a_loop():
    from cqox_platform.secrets.renewal import retry_after_seconds

    assert retry_after_seconds(300) == 30  # short lifetimes (tests): every 30 s
    assert retry_after_seconds(720 * 3600) == 3600  # production: hourly, for the 5 days before the page
