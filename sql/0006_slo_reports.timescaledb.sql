-- Daily SLO reports (issue 5) as a hypertable on day: SLO history that outlives Prometheus retention.
CREATE TABLE slo_reports (
    day DATE NOT NULL,
    service TEXT NOT NULL,
    slo TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'violated', 'insufficient_events', 'no_data')),
    objective DOUBLE PRECISION,
    events DOUBLE PRECISION,
    bad_events DOUBLE PRECISION,
    sli DOUBLE PRECISION,
    error_ratio DOUBLE PRECISION,
    latency_p50 DOUBLE PRECISION,
    latency_p95 DOUBLE PRECISION,
    latency_p99 DOUBLE PRECISION,
    throughput_mean DOUBLE PRECISION,
    throughput_peak DOUBLE PRECISION,
    budget_consumed_30d DOUBLE PRECISION,
    budget_consumed_month DOUBLE PRECISION,
    burn_rates JSONB NOT NULL DEFAULT '{}',
    computed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (day, service, slo)
);
CREATE INDEX idx_slo_reports_slo_day ON slo_reports (slo, day DESC);
SELECT create_hypertable('slo_reports', 'day', chunk_time_interval => INTERVAL '90 days');
