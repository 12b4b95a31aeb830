"""Rollout webhooks, as Flagger's: HTTP calls before and after the rollout and each step.

A policy lists them under ``webhooks``; each has a ``type``:

- ``pre-rollout``: before ``canary start`` moves any traffic. A failure refuses the start (nothing changed).
- ``pre-step``: before each promotion moves traffic to the next step (a load test, a smoke test). A failure
  holds the step (``on_failure: block``, the default; not counted against the canary) or rolls back
  (``on_failure: rollback``).
- ``post-rollout``: after the rollout ended, promoted or rolled back (a notification). A failure is recorded.
- ``rollback``: when the rollout rolls back (failed analysis, gate timeout, webhook, abort), after the traffic is
  back on stable. A failure is recorded and never blocks the rollback.

Each call is a ``POST`` of JSON (the rollout, step, weight and decision; ``metadata`` from the policy) with a
timeout, retried up to ``retries`` times; any 2xx answer passes. URLs can carry tokens, so results and metadata
name a webhook, never its URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import requests

from cqox_platform.canary.decision import HOLD, PROMOTE, ROLLBACK, ROLLED_BACK, Decision, RolloutState
from cqox_platform.canary.policy import (
    POST_ROLLOUT,
    PRE_ROLLOUT,
    PRE_STEP,
    ROLL_BACK,
    ROLLBACK_HOOK,
    WEBHOOK_TYPES,
    Webhook,
)

__all__ = ["POST_ROLLOUT", "PRE_ROLLOUT", "PRE_STEP", "ROLLBACK_HOOK", "WEBHOOK_TYPES", "Webhook"]


@dataclass(frozen=True)
class WebhookResult:
    name: str
    type: str
    ok: bool
    attempts: int
    detail: str  # the last status code or error, never the URL

    def line(self) -> str:
        outcome = "ok" if self.ok else "FAILED"
        return f"{self.type} webhook {self.name}: {outcome} after {self.attempts} attempt(s) ({self.detail})"


Post = Callable[..., Any]


def call(hook: Webhook, payload: dict[str, Any], *, post: Post = requests.post, sleep=time.sleep) -> WebhookResult:
    """POST ``payload`` (and the hook's metadata) until a 2xx answer or ``retries`` more attempts failed."""
    body = {**payload, "webhook": hook.name, "type": hook.type, "metadata": hook.metadata}
    detail = ""
    for attempt in range(1, hook.retries + 2):
        try:
            response = post(hook.url, json=body, timeout=hook.timeout_seconds)
            if 200 <= response.status_code < 300:
                return WebhookResult(hook.name, hook.type, True, attempt, f"HTTP {response.status_code}")
            detail = f"HTTP {response.status_code}"
        except requests.Timeout:
            detail = f"no answer within {hook.timeout_seconds:g} s"
        except requests.RequestException as exc:
            detail = f"{type(exc).__name__}"
        if attempt <= hook.retries:
            sleep(min(0.5 * attempt, 2.0))
    return WebhookResult(hook.name, hook.type, False, hook.retries + 1, detail)


def run_hooks(
    hooks: tuple[Webhook, ...], kind: str, payload: dict[str, Any], *, post: Post = requests.post, sleep=time.sleep
) -> tuple[WebhookResult, ...]:
    return tuple(call(h, payload, post=post, sleep=sleep) for h in hooks if h.type == kind)


def after_pre_step(
    hooks: tuple[Webhook, ...], state: RolloutState, decision: Decision, results: tuple[WebhookResult, ...]
) -> Decision:
    """A promotion as its pre-step webhooks let it through (pure): any failed hook holds it (``block``, not
    counted against the canary) or rolls back (``rollback``, when any failed hook says so)."""
    failed = [r for r in results if not r.ok]
    if decision.action != PROMOTE or not failed:
        return decision
    by_name = {h.name: h for h in hooks}
    why = "; ".join(r.line() for r in failed)
    weight = decision.weight_before
    if any(by_name[r.name].on_failure == ROLL_BACK for r in failed if r.name in by_name):
        rolled = replace(state, status=ROLLED_BACK)
        return Decision(ROLLBACK, f"{why}: rolling back", weight, 0, rolled, decision.verdicts)
    return Decision(HOLD, f"{why}: holding at {weight} %", weight, weight, state, decision.verdicts)
