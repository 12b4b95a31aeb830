-- Canary rollouts to completion (issue 16): promotion to stable, operator controls, approval gates.
-- Numbered 0011, not 0010: 0010 is reserved for the database-roles migration on another branch.
--
-- status: `promoting` (analysis passed or an operator forced it; the stable Deployment is being moved to the
-- canary's pod template, traffic stays on the version known good until it has rolled out) and `paused` (an
-- operator stopped the analysis; the sensor skips the rollout with the reason) join the three of 0008.
ALTER TABLE canary_rollouts DROP CONSTRAINT IF EXISTS canary_rollouts_status_check;
ALTER TABLE canary_rollouts ADD CONSTRAINT canary_rollouts_status_check
    CHECK (status IN ('progressing', 'promoting', 'paused', 'promoted', 'rolled_back'));
-- A rollout that is paused or promoting still owns its service: one active rollout per service.
DROP INDEX IF EXISTS idx_canary_one_active;
CREATE UNIQUE INDEX idx_canary_one_active ON canary_rollouts (service)
    WHERE status IN ('progressing', 'promoting', 'paused');
-- promotion_phase: the last promotion phase that finished (template_copied, stable_rolled_out,
-- traffic_on_stable, canary_scaled_down); a failed promotion resumes after it.
-- approved_step: the highest step index a person approved (gates, `confirm: true`); -1 none.
-- awaiting_approval_since: when a gate first held the rollout for approval (its timeout counts from there).
ALTER TABLE canary_rollouts
    ADD COLUMN promotion_phase TEXT,
    ADD COLUMN approved_step INTEGER NOT NULL DEFAULT -1,
    ADD COLUMN awaiting_approval_since TIMESTAMPTZ;
