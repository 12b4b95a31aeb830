"""Approval gates: a step with ``confirm: true`` waits for a person, as a pure function.

The analysis decides first (``decision.decide``: metrics, evidence, the error-budget gate at every step). Only a
promotion *into* a step that needs confirmation is gated: until someone approves that step (``cqox-platform
canary approve ROLLOUT --reason ...`` or ``canary_approve_job``, which sets ``approved_step``), the rollout holds
at its current weight, without counting the hold against the canary (the canary is fine; a person has not said
yes yet). The wait counts from the first such hold (``awaiting_approval_since``). Past
``confirm_timeout_seconds`` (0: wait forever) the policy's ``on_confirm_timeout`` says what happens: ``hold``
(keep waiting, and say the timeout passed) or ``rollback``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from cqox_platform.canary.decision import HOLD, PROMOTE, ROLLBACK, ROLLED_BACK, Decision, RolloutState
from cqox_platform.canary.policy import ROLLBACK_ON_TIMEOUT, CanaryPolicy


@dataclass(frozen=True)
class Gated:
    decision: Decision
    awaiting_since: datetime | None  # what to store in ``awaiting_approval_since``


def gate(
    policy: CanaryPolicy,
    state: RolloutState,
    decision: Decision,
    approved_step: int,
    awaiting_since: datetime | None,
    now: datetime,
) -> Gated:
    """The decision as the gates let it through; ``state`` is the rollout's state before the decision."""
    if decision.action != PROMOTE:
        return Gated(decision, awaiting_since)
    step = decision.state.step_index
    if step not in policy.confirm_steps or approved_step >= step:
        return Gated(decision, None)
    since = awaiting_since or now
    waited = (now - since).total_seconds()
    weight, target = decision.weight_before, decision.weight_after
    how = "`cqox-platform canary approve ROLLOUT --reason ...` or canary_approve_job"
    if policy.confirm_timeout_seconds and waited >= policy.confirm_timeout_seconds:
        late = f"no approval for {target} % within {policy.confirm_timeout_seconds} s (waited {waited:.0f} s)"
        if policy.on_confirm_timeout == ROLLBACK_ON_TIMEOUT:
            rolled = replace(state, status=ROLLED_BACK)
            return Gated(Decision(ROLLBACK, f"{late}: rolling back", weight, 0, rolled, decision.verdicts), since)
        reason = f"{late}: holding at {weight} % as the policy says (on_confirm_timeout: hold); approve with {how}"
        return Gated(Decision(HOLD, reason, weight, weight, state, decision.verdicts), since)
    reason = (
        f"all metrics passed; step {step} ({target} %) needs a person's approval, waiting since "
        f"{since:%Y-%m-%d %H:%M:%S} UTC: approve with {how}"
    )
    return Gated(Decision(HOLD, reason, weight, weight, state, decision.verdicts), since)
