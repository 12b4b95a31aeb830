"""Group ``canary`` wired with fakes: what the sensor requests (issue 13 items 2 and 10).

The sensor must request one decision run per rollout per interval whatever the canary's metrics say (a run key
with the action in it let a "hold" and a "promote" of one interval both run), and must not hand the run its
evidence as run config (anyone who can launch a run could fabricate it): the run gathers the evidence itself.
What the run does with the database, Prometheus and the VirtualService is proven on the real stack in
tests/integration/test_canary.py.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest

import sensors.canary_sensor as canary_sensor_module
from cqox_platform.canary.decision import RolloutState
from cqox_platform.canary.policy import POLICY_DIR, load_policy, policy_document
from cqox_platform.resources.postgres import PostgresResource
from tests.unit.fakes import FakePrometheus

POLICY = load_policy(POLICY_DIR / "cqox-engine.yaml")
NOW = datetime.now(UTC)


class NoDatabase(PostgresResource):
    @contextmanager
    def connect(self, *, autocommit: bool = False):
        yield None


def rollout(**overrides) -> SimpleNamespace:
    return SimpleNamespace(
        **{"status": "progressing", "last_reason": None, **overrides},
        rollout_id="cqox-engine-20260101t000000",
        service="cqox-engine",
        started_at=NOW - timedelta(seconds=5 * POLICY.interval_seconds + 30),
        last_decision_at=NOW - timedelta(seconds=POLICY.interval_seconds + 30),
        step_index=0,
        state_version=2,
        state=RolloutState(0),
        policy=policy_document(POLICY),
        policy_version=POLICY.version,
    )


@pytest.fixture(autouse=True)
def _one_rollout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary_sensor_module, "active_rollouts", lambda conn: [rollout()])


def tick(answers: dict[str, float]) -> dg.RunRequest:
    FakePrometheus.reset(answers)
    resources = {"postgres": NoDatabase(), "prometheus": FakePrometheus(url="http://fake")}
    with dg.build_sensor_context(resources=resources) as context:
        result = canary_sensor_module.canary_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    (request,) = result.run_requests
    return request


GOOD = {"increase(": 5000, "histogram_quantile": 0.3, "": 0.0}  # promote (no errors, budget untouched)
BAD = {"increase(": 5000, "histogram_quantile": 0.3, "": 0.2}  # hold (analysis failed)


def test_one_decision_run_per_rollout_per_interval_whatever_the_metrics_say() -> None:
    assert tick(GOOD).run_key == tick(BAD).run_key


def test_the_run_is_not_handed_evidence_it_could_be_fed() -> None:
    request = tick(GOOD)
    config = json.dumps(request.run_config)
    assert "evidence" not in config and "canary_requests" not in config
    assert request.tags["cqox/rollout"] == rollout().rollout_id
    # What the run is for: the rollout state it may change, nothing the run would believe about the canary.
    assert request.run_config == {"ops": {"canary_rollout": {"config": {"state_version": 2}}}}


def test_the_policy_is_serialisable_with_the_rollout() -> None:
    from cqox_platform.canary.policy import parse_policy

    doc = policy_document(POLICY)
    assert json.loads(json.dumps(doc)) == doc
    assert asdict(parse_policy(doc, where="stored")) == asdict(POLICY) | {"source": "stored"}


def test_a_paused_rollout_is_skipped_with_who_paused_it_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 2: the sensor requests no decision for a paused rollout and says why."""
    why = "paused by alice: load test in progress"
    monkeypatch.setattr(
        canary_sensor_module, "active_rollouts", lambda conn: [rollout(status="paused", last_reason=why)]
    )
    with dg.build_sensor_context(resources={"postgres": NoDatabase()}) as context:
        result = canary_sensor_module.canary_sensor(context)
    assert isinstance(result, dg.SkipReason) and why in result.skip_message
