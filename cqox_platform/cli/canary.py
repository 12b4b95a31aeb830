"""`cqox-platform canary start | status | backtest | abort | pause | resume | promote | approve`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import cqox_platform.cli.context as context
from cqox_platform.cli.completion import rollout_ids
from cqox_platform.cli.json_output import echo_json, json_option

if TYPE_CHECKING:
    from cqox_platform.canary.policy import CanaryPolicy
    from cqox_platform.canary.rollout import BacktestStep
    from cqox_platform.canary.store import Rollout

#: ``canary status --json`` and ``canary backtest --json``: raised when a reader could trip over a change.
STATUS_SCHEMA_VERSION = 1
BACKTEST_SCHEMA_VERSION = 1


_CANARY_EXAMPLES = """
\b
Examples:
  # every rollout, newest first, as JSON
  cqox-platform canary status --json
  # what the engine's policy would have done since yesterday
  cqox-platform canary backtest cqox-engine --start 2026-12-03T00:00:00+00:00
"""


@click.group("canary", epilog=_CANARY_EXAMPLES)
def canary() -> None:
    """Canary rollouts: start one, see them all, replay history through a policy, control one."""


def _policy(service: str, policy_file: Path | None):
    from cqox_platform.canary.policy import load_policy, policy_for

    return load_policy(policy_file) if policy_file else policy_for(service)


@canary.command("start")
@click.argument("service")
@click.option("--image", required=True, help="The new image for the canary Deployment.")
@click.option("--policy", "policy_file", type=click.Path(exists=True, path_type=Path), default=None)
def canary_start(service: str, image: str, policy_file: Path | None) -> None:
    """Set SERVICE's canary image and the first step's weight; canary_sensor takes it from there."""
    from cqox_platform.canary.rollout import start_rollout

    policy = _policy(service, policy_file)
    with context.postgres().connect(autocommit=True) as conn:
        rollout, change = start_rollout(conn, context.kubernetes(), policy, image)
    click.echo(
        f"{rollout.rollout_id}: {image} at {rollout.weight} % (was {rollout.previous_image}); VirtualService "
        f"resourceVersion {change.resource_version_before} -> {change.resource_version_after}"
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def status_json(rollouts: list[Rollout]) -> dict[str, Any]:
    """What ``canary status --json`` prints: every rollout as stored, newest first (the policy left out)."""
    return {
        "schema_version": STATUS_SCHEMA_VERSION,
        "rollouts": [
            {
                "rollout_id": r.rollout_id,
                "service": r.service,
                "status": r.status,
                "image": r.image,
                "previous_image": r.previous_image,
                "policy_version": r.policy_version,
                "step_index": r.step_index,
                "weight": r.weight,
                "failures": r.failures,
                "consecutive_holds": r.consecutive_holds,
                "started_at": _iso(r.started_at),
                "updated_at": _iso(r.updated_at),
                "last_decision": r.last_decision,
                "last_reason": r.last_reason,
                "last_decision_at": _iso(r.last_decision_at),
                "promotion_phase": r.promotion_phase,
                "awaiting_approval_since": _iso(r.awaiting_approval_since),
            }
            for r in rollouts
        ],
    }


@canary.command("status")
@click.option("--limit", default=20, show_default=True)
@json_option
def canary_status(limit: int, as_json: bool) -> None:
    """Every rollout, newest first: step, weight, counters and the last decision with its reason."""
    from cqox_platform.canary.store import all_rollouts

    with context.postgres().connect() as conn:
        rollouts = all_rollouts(conn, limit)
    if as_json:
        echo_json(status_json(rollouts))
        return
    click.echo(
        f"{'ROLLOUT':<34}{'STATUS':<13}{'STEP':<6}{'WEIGHT':<8}{'FAIL':<6}{'HOLDS':<7}{'IMAGE':<30}LAST DECISION"
    )
    for r in rollouts:
        last = f"{r.last_decision}: {r.last_reason}" if r.last_decision else "-"
        click.echo(
            f"{r.rollout_id:<34}{r.status:<13}{r.step_index:<6}{r.weight:<8}{r.failures:<6}{r.consecutive_holds:<7}"
            f"{r.image:<30}{last}"
        )
    if not rollouts:
        click.echo("(no rollouts)")


@canary.command("backtest")
@click.argument("service")
@click.option("--start", "start_at", required=True, help="ISO time the rollout would have started.")
@click.option("--end", "end_at", default=None, help="ISO time to stop (default now).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, path_type=Path), default=None)
@json_option
def canary_backtest(service: str, start_at: str, end_at: str | None, policy_file: Path | None, as_json: bool) -> None:
    """Replay Prometheus history through a policy: when it would have promoted, held or rolled back."""
    from cqox_platform.canary.analysis import budget_gate_remaining
    from cqox_platform.canary.rollout import backtest

    policy = _policy(service, policy_file)
    prometheus = context.prometheus()
    start = _when(start_at)
    end = _when(end_at) if end_at else datetime.now(UTC).timestamp()
    steps = backtest(
        policy, prometheus.query, start, end, budget_at=lambda t: budget_gate_remaining(policy, prometheus.query, at=t)
    )
    if as_json:
        echo_json(backtest_json(service, policy, start, end, steps))
        return
    for step in steps:
        at = datetime.fromtimestamp(step.at, UTC).isoformat(timespec="seconds")
        d = step.decision
        click.echo(f"{at}  {d.action:<9}{d.weight_before:>4} % -> {d.weight_after:>3} %  {d.reason}")
    final = steps[-1].decision.state.status if steps else "no full interval in the range"
    click.echo(f"policy {policy.source} v{policy.version}: {len(steps)} interval(s), outcome: {final}")


def backtest_json(
    service: str, policy: CanaryPolicy, start: float, end: float, steps: list[BacktestStep]
) -> dict[str, Any]:
    """What ``canary backtest --json`` prints: each interval's decision, and the outcome (null without one)."""

    def at(moment: float) -> str:
        return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")

    return {
        "schema_version": BACKTEST_SCHEMA_VERSION,
        "service": service,
        "policy": {"source": policy.source, "version": policy.version},
        "start": at(start),
        "end": at(end),
        "steps": [
            {
                "at": at(step.at),
                "action": step.decision.action,
                "reason": step.decision.reason,
                "weight_before": step.decision.weight_before,
                "weight_after": step.decision.weight_after,
                "status": step.decision.state.status,
                "step_index": step.decision.state.step_index,
            }
            for step in steps
        ],
        "outcome": steps[-1].decision.state.status if steps else None,
    }


def _when(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-26T10:00:00+00:00).") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _operator_command(action: str, summary: str) -> click.Command:
    """``canary ACTION ROLLOUT --reason TEXT``: the operator action under the rollout's row lock, audited."""

    @click.argument("rollout_id", metavar="ROLLOUT", shell_complete=rollout_ids)
    @click.option("--reason", required=True, help="Why (recorded in audit_log with who and the state before/after).")
    @click.option("--who", default=None, help="Who acts (default: the OS user).")
    def command(rollout_id: str, reason: str, who: str | None) -> None:
        import getpass

        from cqox_platform.canary.operator import operate

        with context.postgres().connect(autocommit=True) as conn:
            result = operate(
                conn, context.kubernetes(), rollout_id, action, who=who or getpass.getuser(), reason=reason
            )
        click.echo(f"{result.message}; recorded in audit_log as canary.{action} by {result.who}")
        if result.promotion is not None:
            for phase in result.promotion.phases:
                click.echo(f"  {phase.name:<20}{phase.seconds:>7.1f} s  {phase.detail}")
            if not result.promotion.ok:
                raise SystemExit(1)

    command.__doc__ = summary
    return click.command(action)(command)


for _action, _summary in (
    ("abort", "Roll ROLLOUT back now, as a failed analysis would: stable 100 / canary 0, canary image reverted."),
    ("pause", "Stop ROLLOUT's analysis where it is; the sensor skips it (with the reason) until `resume`."),
    ("resume", "Continue a paused ROLLOUT; its next analysis is one interval from now."),
    ("promote", "Promote ROLLOUT to stable now, without further analysis (also finishes a failed promotion)."),
    ("approve", "Let ROLLOUT go on to its next step when that step needs a person's approval (`confirm: true`)."),
):
    canary.add_command(_operator_command(_action, _summary))
