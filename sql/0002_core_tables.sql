-- The CQOx roadmap's application tables with the indexes it lists.

CREATE TABLE IF NOT EXISTS audit_log (
    id BIGSERIAL PRIMARY KEY,
    timestamp TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    user_id TEXT,
    action TEXT NOT NULL,
    resource TEXT,
    details JSONB,
    encrypted_payload BYTEA,
    ip_address INET,
    user_agent TEXT
);
CREATE INDEX IF NOT EXISTS idx_audit_timestamp ON audit_log (timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_audit_user ON audit_log (user_id);
CREATE INDEX IF NOT EXISTS idx_audit_action ON audit_log (action);

CREATE TABLE IF NOT EXISTS datasets (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    name TEXT NOT NULL,
    rows INTEGER,
    columns INTEGER,
    status TEXT,
    metadata JSONB,
    encrypted_data_path BYTEA
);
CREATE INDEX IF NOT EXISTS idx_datasets_created ON datasets (created_at DESC);
CREATE INDEX IF NOT EXISTS idx_datasets_status ON datasets (status);

CREATE TABLE IF NOT EXISTS analysis_results (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    dataset_id UUID REFERENCES datasets(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    estimator TEXT NOT NULL,
    ate DOUBLE PRECISION,
    se DOUBLE PRECISION,
    ci_lower DOUBLE PRECISION,
    ci_upper DOUBLE PRECISION,
    p_value DOUBLE PRECISION,
    results JSONB
);
CREATE INDEX IF NOT EXISTS idx_analysis_dataset ON analysis_results (dataset_id);
CREATE INDEX IF NOT EXISTS idx_analysis_created ON analysis_results (created_at DESC);

-- Which Vault Transit key version wraps which data; never key material (the roadmap's key_hash is dropped:
-- even a hash of a key is material an attacker can test guesses against).
CREATE TABLE IF NOT EXISTS encryption_keys (
    id SERIAL PRIMARY KEY,
    key_name TEXT UNIQUE NOT NULL,
    key_version INTEGER NOT NULL CHECK (key_version >= 1),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    rotated_at TIMESTAMPTZ
);
