-- Canary rollouts (issue 6): one row per rollout, moved forward by the canary job's decisions.
CREATE TABLE canary_rollouts (
    rollout_id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    image TEXT NOT NULL,
    previous_image TEXT,
    policy_version INTEGER NOT NULL,
    step_index INTEGER NOT NULL DEFAULT 0,
    weight INTEGER NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    consecutive_holds INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('progressing', 'promoted', 'rolled_back')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_decision_at TIMESTAMPTZ,
    last_decision TEXT,
    last_reason TEXT
);
-- At most one active rollout per service.
CREATE UNIQUE INDEX idx_canary_one_active ON canary_rollouts (service) WHERE status = 'progressing';
