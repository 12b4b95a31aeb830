-- Canary decisions guarded by the rollout's state (issue 13 item 2).
-- state_version: bumped by every recorded decision; a decision run applies only to the version it was
-- requested for (compare-and-set under the row lock), so two runs of one interval cannot both apply.
-- policy: the policy document the rollout started with; the sensor and the runs decide with it, not with
-- whatever policy file is in place later. NULL only for rollouts started before this migration.
ALTER TABLE canary_rollouts
    ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN policy JSONB;

-- Every decision run's outcome: applied, or stale (and why), with the evidence the run gathered itself.
CREATE TABLE canary_decisions (
    decision_id BIGSERIAL PRIMARY KEY,
    rollout_id TEXT NOT NULL REFERENCES canary_rollouts (rollout_id),
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    run_id TEXT,
    state_version INTEGER NOT NULL,
    step_index INTEGER NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('applied', 'stale')),
    reason TEXT NOT NULL,
    weight_before INTEGER NOT NULL,
    weight_after INTEGER NOT NULL,
    evidence JSONB
);
CREATE INDEX idx_canary_decisions_rollout ON canary_decisions (rollout_id, decided_at);
