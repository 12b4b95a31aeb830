#!/usr/bin/env bash
# The main job: install what is missing, start the local stack, materialize every asset, show the UI.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
VENV="${CQOX_VENV:-.venv}"
# CQOX_HA=1: a new stack with etcd and three Patroni nodes behind HAProxy (`stack up --ha`), and group `ha`.
HA_FLAG=()
SELECT='not group:datasets and not group:canary and not group:ha and not key:alert_drill and not key:site_loss_drill and not key:slo_report and not key:slo_version_report'
if [ "${CQOX_HA:-0}" = "1" ]; then
  HA_FLAG=(--ha)
  SELECT='not group:datasets and not group:canary and not key:alert_drill and not key:site_loss_drill and not key:slo_report and not key:slo_version_report'
fi
"$VENV/bin/cqox-platform" stack up --traffic "${HA_FLAG[@]}"
eval "$("$VENV/bin/cqox-platform" stack env)"
# Every unpartitioned asset except group `datasets` (encrypted_datasets has one partition per upload, which the
# upload sensor materializes; dataset_key_rotation rotates keys, which a routine run should not do) and group
# `canary` (one partition per rollout, materialized by the canary sensor), `alert_drill` (it injects faults
# for minutes; weekly schedule or `alert_drill_job`) and, on a single node, group `ha` (the Patroni cluster's
# status needs `--ha`), then
# the SLO reports (per service, and per version for the days canary rollouts ran) of the last seven days, each
# backfilled as one run (daily partitions, BackfillPolicy.single_run).
echo "materializing the asset graph (--select '$SELECT') ..." >&2
"$VENV/bin/dagster" asset materialize -m cqox_platform.definitions --select "$SELECT"
# A week of synthetic traffic history, so the first SLO report has real numbers and a chart (idempotent).
"$VENV/bin/cqox-platform" slo backfill --days 7
first=$(date -u -d '7 days ago' +%Y-%m-%d)
yesterday=$(date -u -d yesterday +%Y-%m-%d)
echo "materializing slo_report for $first...$yesterday (one run) ..." >&2
"$VENV/bin/dagster" asset materialize -m cqox_platform.definitions --select slo_report \
  --partition-range "$first...$yesterday"
echo "materializing slo_version_report for $first...$yesterday (one run) ..." >&2
"$VENV/bin/dagster" asset materialize -m cqox_platform.definitions --select slo_version_report \
  --partition-range "$first...$yesterday"
cat <<MSG

Done. Dagster UI: ${CQOX_DAGSTER_URL:-http://127.0.0.1:3000} (runs, asset graph, checks, schedules)
Use the stack from a shell:  eval "\$($VENV/bin/cqox-platform stack env)"   (then psql, bao, aws cli work)
Status / stop:               $VENV/bin/cqox-platform stack status  |  $VENV/bin/cqox-platform stack down
MSG
