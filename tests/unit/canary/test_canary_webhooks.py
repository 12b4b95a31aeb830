"""Rollout webhooks (issue 16 item 4): timeout, retries, and what a failure does, against a local HTTP server
that can be told to fail (tests/webhook_receiver.py). The wiring into start, steps and rollbacks runs on the
real stack in tests/integration/test_canary.py."""

from __future__ import annotations

import pytest
import yaml

from cqox_platform.canary.decision import HOLD, PROMOTE, ROLLBACK, ROLLED_BACK, RolloutState, decide
from cqox_platform.canary.policy import POLICY_DIR, PolicyError, parse_policy, policy_document
from cqox_platform.canary.webhooks import Webhook, after_pre_step, call, run_hooks
from tests.helpers import CANARY_POLICY, good_evidence
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r


def hook(receiver, path="/load-test", **kw) -> Webhook:
    return Webhook(name=path.strip("/"), type=kw.pop("type", "pre-step"), url=receiver.url(path), **kw)


def no_sleep(_seconds: float) -> None:
    pass


def test_a_passing_webhook_gets_the_rollout_step_and_decision(receiver) -> None:
    h = hook(receiver, metadata={"cmd": "hey -z 1m"})
    result = call(h, {"rollout": "r1", "step_index": 1, "weight": 50, "decision": "promote"}, sleep=no_sleep)
    assert result.ok and result.attempts == 1 and result.detail == "HTTP 200"
    (body,) = receiver.calls["/load-test"]
    assert body["rollout"] == "r1" and body["weight"] == 50 and body["decision"] == "promote"
    assert body["type"] == "pre-step" and body["metadata"] == {"cmd": "hey -z 1m"}


def test_a_failing_webhook_is_retried_and_passes_when_it_recovers(receiver) -> None:
    receiver.fail("/load-test", times=2)
    result = call(hook(receiver, retries=2), {}, sleep=no_sleep)
    assert result.ok and result.attempts == 3 and len(receiver.calls["/load-test"]) == 3


def test_a_webhook_that_keeps_failing_fails_after_its_retries_and_names_no_url(receiver) -> None:
    receiver.fail("/load-test")
    result = call(hook(receiver, retries=1), {}, sleep=no_sleep)
    assert not result.ok and result.attempts == 2 and result.detail == "HTTP 500"
    assert "127.0.0.1" not in result.line() and "load-test" in result.line()


def test_a_webhook_that_does_not_answer_times_out(receiver) -> None:
    receiver.hang("/slow", 2.0)
    result = call(hook(receiver, "/slow", timeout_seconds=0.3, retries=0), {}, sleep=no_sleep)
    assert not result.ok and "no answer within 0.3 s" in result.detail


def test_nobody_listening_is_a_failure_not_a_crash() -> None:
    h = Webhook("gone", "pre-step", "http://127.0.0.1:9/x", timeout_seconds=0.5, retries=0)
    assert not call(h, {}, sleep=no_sleep).ok


def test_only_hooks_of_the_kind_run(receiver) -> None:
    hooks = (hook(receiver, "/a"), hook(receiver, "/b", type="rollback"))
    results = run_hooks(hooks, "rollback", {}, sleep=no_sleep)
    assert [r.name for r in results] == ["b"] and "/a" not in receiver.calls


PROMOTING = decide(CANARY_POLICY, RolloutState(0), good_evidence())


@pytest.mark.parametrize(
    ("on_failure", "action", "weight", "fragment"),
    [("block", HOLD, 10, "holding at 10 %"), ("rollback", ROLLBACK, 0, "rolling back")],
)
def test_a_failing_pre_step_webhook_blocks_or_rolls_back_as_the_policy_says(
    receiver, on_failure, action, weight, fragment
) -> None:
    assert PROMOTING.action == PROMOTE
    receiver.fail("/load-test")
    hooks = (hook(receiver, retries=0, on_failure=on_failure),)
    state = RolloutState(0, failures=1)
    d = after_pre_step(hooks, state, PROMOTING, run_hooks(hooks, "pre-step", {}, sleep=no_sleep))
    assert (d.action, d.weight_after) == (action, weight) and fragment in d.reason and "load-test" in d.reason
    assert d.state == (state if action == HOLD else RolloutState(0, failures=1, status=ROLLED_BACK))


def test_a_passing_pre_step_webhook_lets_the_promotion_through(receiver) -> None:
    hooks = (hook(receiver),)
    assert after_pre_step(hooks, RolloutState(0), PROMOTING, run_hooks(hooks, "pre-step", {})) == PROMOTING


def _raw() -> dict:
    return yaml.safe_load((POLICY_DIR / "cqox-engine.yaml").read_text())


def test_webhooks_in_the_policy_are_validated_and_stored_with_the_rollout() -> None:
    raw = _raw()
    raw["webhooks"] = [
        {"name": "load", "type": "pre-step", "url": "http://x/load", "timeout_seconds": 5, "on_failure": "rollback"},
        {"name": "tell", "type": "post-rollout", "url": "https://x/n"},
    ]
    policy = parse_policy(raw)
    assert [(h.name, h.type, h.on_failure) for h in policy.webhooks] == [
        ("load", "pre-step", "rollback"),
        ("tell", "post-rollout", "block"),
    ]
    assert parse_policy(policy_document(policy)).webhooks == policy.webhooks
    for bad, fragment in [
        ({"name": "x", "type": "mid-step", "url": "http://x"}, "type must be one of"),
        ({"name": "x", "type": "pre-step", "url": "file:///etc/passwd"}, "url must be http"),
        ({"name": "x", "type": "pre-step", "url": "http://x", "on_failure": "ignore"}, "on_failure"),
        ({"type": "pre-step", "url": "http://x"}, "needs `name`"),
    ]:
        raw["webhooks"] = [bad]
        with pytest.raises(PolicyError, match=fragment):
            parse_policy(raw, where="hooks.yaml")
