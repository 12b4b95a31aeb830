-- Encrypted datasets (issue 3): the wrapped data key, its Transit version and the plaintext's SHA-256 live in
-- the row beside the S3 object; encrypted_data_path holds the object key encrypted with pgcrypto under a key
-- kept in Vault KV (passed as a bind parameter, never in statement text).
CREATE EXTENSION IF NOT EXISTS pgcrypto;

ALTER TABLE datasets
    ADD COLUMN wrapped_dek TEXT,
    ADD COLUMN key_name TEXT,
    ADD COLUMN key_version INTEGER,
    ADD COLUMN plaintext_sha256 TEXT;
CREATE INDEX idx_datasets_name ON datasets (name, created_at DESC);
CREATE INDEX idx_datasets_key_version ON datasets (key_name, key_version);
