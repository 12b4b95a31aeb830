-- Same as the plain dialect. pgcrypto ships with every TimescaleDB image; PGlite, used to test this dialect,
-- lacks it, so it is created only where available (the dataset flow needs it and runs on PostgreSQL).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    END IF;
END
$$;

ALTER TABLE datasets
    ADD COLUMN wrapped_dek TEXT,
    ADD COLUMN key_name TEXT,
    ADD COLUMN key_version INTEGER,
    ADD COLUMN plaintext_sha256 TEXT;
CREATE INDEX idx_datasets_name ON datasets (name, created_at DESC);
CREATE INDEX idx_datasets_key_version ON datasets (key_name, key_version);
