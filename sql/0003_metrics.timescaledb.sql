-- metrics as a TimescaleDB hypertable on time, one-day chunks (so retention granularity matches the plain
-- dialect's daily partitions).
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE metrics (
    time TIMESTAMPTZ NOT NULL,
    metric_name TEXT NOT NULL,
    value DOUBLE PRECISION,
    labels JSONB,
    PRIMARY KEY (time, metric_name)
);
SELECT create_hypertable('metrics', 'time', chunk_time_interval => INTERVAL '1 day');

-- Compression after 7 days, segmented by metric_name; retention of 90 days (roadmap).
ALTER TABLE metrics SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'metric_name',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('metrics', INTERVAL '7 days');
SELECT add_retention_policy('metrics', INTERVAL '90 days');
