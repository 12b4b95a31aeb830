-- Backups and disaster recovery (issue 4). S3 holds the truth; these tables are for queries and the UI.
CREATE TABLE backups (
    backup_id TEXT PRIMARY KEY,
    system_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    label TEXT NOT NULL,
    timeline INTEGER NOT NULL,
    start_lsn PG_LSN NOT NULL,
    stop_lsn PG_LSN NOT NULL,
    start_wal TEXT NOT NULL,
    stop_wal TEXT NOT NULL,
    start_time TIMESTAMPTZ NOT NULL,
    stop_time TIMESTAMPTZ NOT NULL,
    database_bytes BIGINT NOT NULL,
    compressed_bytes BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    throughput_mib_s DOUBLE PRECISION NOT NULL,
    key_name TEXT NOT NULL,
    key_version INTEGER NOT NULL,
    object_key TEXT NOT NULL,
    pg_version TEXT NOT NULL,
    record JSONB NOT NULL,
    deleted_at TIMESTAMPTZ
);
CREATE INDEX idx_backups_stop_time ON backups (stop_time DESC);

-- Points whose table contents were captured, so a restore to that point can be proven row for row.
CREATE TABLE restore_points (
    name TEXT PRIMARY KEY,
    lsn PG_LSN NOT NULL,
    timeline INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    database TEXT NOT NULL,
    tables JSONB NOT NULL
);
CREATE INDEX idx_restore_points_created ON restore_points (created_at DESC);

CREATE TABLE restore_drills (
    drill_id TEXT PRIMARY KEY,
    backup_id TEXT NOT NULL,
    bucket TEXT NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('restore_point', 'time', 'backup_end')),
    target TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    passed BOOLEAN NOT NULL,
    error TEXT,
    rto_seconds DOUBLE PRECISION,
    download_seconds DOUBLE PRECISION,
    decrypt_seconds DOUBLE PRECISION,
    extract_seconds DOUBLE PRECISION,
    verify_seconds DOUBLE PRECISION,
    replay_seconds DOUBLE PRECISION,
    checks_seconds DOUBLE PRECISION,
    tables_checked INTEGER,
    indexes_checked INTEGER,
    details JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_restore_drills_backup ON restore_drills (backup_id, finished_at DESC);
