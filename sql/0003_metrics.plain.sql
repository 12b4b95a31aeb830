-- metrics without TimescaleDB: native range partitions by day, created ahead and dropped by pg_partman.
CREATE SCHEMA IF NOT EXISTS partman;
CREATE EXTENSION IF NOT EXISTS pg_partman SCHEMA partman;

CREATE TABLE metrics (
    time TIMESTAMPTZ NOT NULL,
    metric_name TEXT NOT NULL,
    value DOUBLE PRECISION,
    labels JSONB,
    PRIMARY KEY (time, metric_name)
) PARTITION BY RANGE (time);

SELECT partman.create_parent(
    p_parent_table => 'public.metrics',
    p_control => 'time',
    p_type => 'native',
    p_interval => 'daily',
    p_premake => 7
);
-- Retention: 90 days (roadmap), by dropping whole partitions during maintenance.
UPDATE partman.part_config
   SET retention = '90 days',
       retention_keep_table = false,
       retention_keep_index = false,
       infinite_time_partitions = true
 WHERE parent_table = 'public.metrics';
