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
