-- metrics_5min and metrics_1h as rollup tables with the continuous aggregates' names and columns, refreshed
-- incrementally from a watermark by cqox_platform.schema.rollups.
CREATE TABLE metrics_5min (
    bucket TIMESTAMPTZ NOT NULL,
    metric_name TEXT NOT NULL,
    avg_value DOUBLE PRECISION,
    max_value DOUBLE PRECISION,
    min_value DOUBLE PRECISION,
    count BIGINT NOT NULL,
    PRIMARY KEY (bucket, metric_name)
);

CREATE TABLE metrics_1h (
    bucket TIMESTAMPTZ NOT NULL,
    metric_name TEXT NOT NULL,
    avg_value DOUBLE PRECISION,
    max_value DOUBLE PRECISION,
    min_value DOUBLE PRECISION,
    count BIGINT NOT NULL,
    PRIMARY KEY (bucket, metric_name)
);

-- Everything before the watermark is materialized; refreshes recompute from watermark - late window.
CREATE TABLE rollup_watermarks (
    rollup TEXT PRIMARY KEY,
    bucket_width INTERVAL NOT NULL,
    watermark TIMESTAMPTZ
);
INSERT INTO rollup_watermarks (rollup, bucket_width) VALUES
    ('metrics_5min', INTERVAL '5 minutes'),
    ('metrics_1h', INTERVAL '1 hour');
