#!/usr/bin/env bash
# The main job on the local stack, from nothing to rows in production:
#   1. start PostgreSQL, Redis, the S3 endpoint, an SMTP sink and Airflow (scripts/stack.sh up)
#   2. create the sample client `ehrlogic` (a dental group's database, 1,000 patients)
#   3. build and run the client extractor binary: today's batch lands in the bucket
#   4. trigger the client's DAG and watch it run to success
#   5. print the Airflow UI address and login, and the row counts that reached production
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PATIENTS="${CLIENTFLOW_DEMO_PATIENTS:-1000}"
PG_HOST="${CLIENTFLOW_PG_HOST:-127.0.0.1}"
PG_PORT="${CLIENTFLOW_PG_PORT:-5432}"
S3_PORT="${CLIENTFLOW_S3_PORT:-5055}"
BUCKET="${CLIENTFLOW_BUCKET:-clientflow-landing}"
AIRFLOW_PORT="${CLIENTFLOW_AIRFLOW_PORT:-8080}"
TODAY="$(date -u +%F)"
DAG=client_ehrlogic
say() { printf '\n==> %s\n' "$*"; }

say "Starting the local stack"
scripts/stack.sh up
eval "$(scripts/stack.sh airflow-env)"

say "Creating the sample client database ehrlogic_source ($PATIENTS patients)"
.venv/bin/python -m clientflow.sample.ehrlogic --admin-dsn "postgresql://postgres@$PG_HOST:$PG_PORT/postgres" \
  --database ehrlogic_source --patients "$PATIENTS"

say "Building the client extractor binary (dist/client-extractor)"
make --no-print-directory extractor

say "Extracting today's batch ($TODAY) into s3://$BUCKET"
EXTRACTOR_DB_PASSWORD=local-trust AWS_ACCESS_KEY_ID=local-access-key AWS_SECRET_ACCESS_KEY=local-secret-key \
AWS_DEFAULT_REGION=us-east-1 dist/client-extractor \
  --source "postgresql://ehrlogic_reader@$PG_HOST:$PG_PORT/ehrlogic_source" --client ehrlogic \
  --date "$TODAY" --output "s3://$BUCKET" --endpoint-url "http://127.0.0.1:$S3_PORT"

meta() { psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d clientflow_airflow -Atqc "$1"; }

say "Waiting for Airflow to parse $DAG"
for _ in $(seq 1 90); do
  [ -n "$(meta "select 1 from dag where dag_id = '$DAG' and not is_stale")" ] && break
  sleep 2
done
.venv/bin/airflow dags unpause "$DAG" >/dev/null 2>&1

# Unpaused, the DAG finds the batch by itself: the bucket's event for its manifest, or the sweep of
# the scheduled run. The demo follows that run rather than starting another (which would only find
# the batch promoted and say DUPLICATE); it triggers one only if nothing took the batch up.
ledger() { psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d clientflow_staging -Atqc \
  "select state || ' ' || coalesce(airflow_run_id, '-') from pipeline.batches where client_name = 'ehrlogic'
   and batch_date = '$TODAY' order by created_at desc limit 1"; }
say "Waiting for $DAG to take up the batch of $TODAY (bucket event or sweep)"
found=""
for _ in $(seq 1 60); do
  found=$(ledger); [ -n "$found" ] && break
  sleep 3
done
if [ -z "$found" ]; then
  say "Nothing took it up: triggering $DAG for batch_date=$TODAY"
  .venv/bin/airflow dags trigger "$DAG" --run-id "demo__$(date -u +%Y%m%dT%H%M%S)" \
    --conf "{\"batch_date\": \"$TODAY\"}" >/dev/null 2>&1
fi
state=""
for _ in $(seq 1 300); do
  found=$(ledger)
  case "${found%% *}" in SUCCESS|FAILED) break ;; esac
  sleep 3
done
RUN_ID="${found#* }"
state=$(meta "select state from dag_run where dag_id = '$DAG' and run_id = '$RUN_ID'")
for _ in $(seq 1 60); do
  case "$state" in success|failed) break ;; esac
  sleep 2
  state=$(meta "select state from dag_run where dag_id = '$DAG' and run_id = '$RUN_ID'")
done
echo "Batch $TODAY: ${found%% *}, promoted by DAG run $RUN_ID ($state)"

say "Production (database clientflow_production, schema practice)"
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d clientflow_production -P footer=off -c \
  "select 'providers' as table_name, count(*) as rows from practice.providers where client_id = 'ehrlogic'
   union all select 'patients', count(*) from practice.patients where client_id = 'ehrlogic'
   union all select 'appointments', count(*) from practice.appointments where client_id = 'ehrlogic'
   union all select 'procedures', count(*) from practice.procedures where client_id = 'ehrlogic'"
say "The job ledger (pipeline.batch_events): PENDING -> PROCESSING -> SUCCESS"
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d clientflow_staging -P footer=off -c \
  "select e.at::timestamp(0) as at, e.state, b.batch_date, b.ingestion_id, e.airflow_run_id
   from pipeline.batch_events e join pipeline.batches b using (ingestion_id)
   where b.client_name = 'ehrlogic' order by e.event_id desc limit 6"

cat <<MSG

Airflow UI:  http://127.0.0.1:$AIRFLOW_PORT   (login: admin / admin, local stack only)
Status page: http://127.0.0.1:$AIRFLOW_PORT/clientflow/status   (in the UI: Browse → Clientflow status)
Alert emails of the local stack land in the Maildir .stack/mail; metrics: http://127.0.0.1:9090.
Stop everything with: make down
MSG
[ "$state" = success ] && [ "${found%% *}" = SUCCESS ]
