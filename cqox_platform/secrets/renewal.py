"""When the platform must renew its AppRole secret-ids by itself, decided from what the last ``vault_config``
run recorded (no Vault access needed to decide).

``vault_config`` records, for each AppRole whose credentials file it manages, when the secret-id left in the file
expires and its lifetime; it replaces a secret-id once less than half of its lifetime is left
(``vault_setup.secret_id_needs_renewal``). ``secret_id_renewal_sensor`` asks for a ``vault_config`` run on the same
terms, so it never asks for a run that would renew nothing, and it fails closed: no record, an unreadable one or a
lifetime that differs from the setting is a reason to run.
"""

from __future__ import annotations

import math
from typing import Any

#: The ``vault_config`` metadata entry holding the record (AppRole -> ``expires_at``, ``ttl_seconds``).
SECRET_IDS_METADATA = "secret_ids"


def renewal_due(recorded: dict[str, Any] | None, ttl_seconds: int, now: float) -> str | None:
    """Why ``vault_config`` must run now, or ``None`` while every recorded secret-id has half its lifetime left."""
    if not recorded:
        return "no vault_config run has recorded its secret-ids"
    for role, life in sorted(recorded.items()):
        try:
            expires_at, lifetime = float(life["expires_at"]), float(life["ttl_seconds"])
        except (KeyError, TypeError, ValueError):
            return f"the recorded secret-id of {role} is unreadable: {life!r}"
        if not (math.isfinite(expires_at) and math.isfinite(lifetime)):
            return f"the recorded secret-id of {role} is unreadable: {life!r}"
        if lifetime != ttl_seconds:
            return f"{role}'s secret-id lifetime is {lifetime:.0f} s; the setting says {ttl_seconds} s"
        left = expires_at - now
        if left < lifetime / 2:
            return f"{role}'s secret-id has {left:.0f} s left, less than half its lifetime of {lifetime:.0f} s"
    return None


def retry_after_seconds(ttl_seconds: float) -> float:
    """How long after a ``vault_config`` run ended the sensor waits before asking for another: a sixteenth of the
    lifetime, between 30 s and an hour. A renewal that keeps failing is retried many times before the expiry
    page (a third of the lifetime left), never in a tight loop."""
    return min(3600.0, max(30.0, ttl_seconds / 16))
