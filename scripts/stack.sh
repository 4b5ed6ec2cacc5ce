#!/usr/bin/env bash
# The local stack: PostgreSQL, Redis, an S3 endpoint (moto), an SMTP sink, and Airflow.
#
#   scripts/stack.sh services   PostgreSQL, Redis and MariaDB for the tests (reused if running,
#                               else installed from Debian's packages and started)
#   scripts/stack.sh up         services + moto + SMTP sink (Maildir .stack/mail) + databases +
#                               metrics server + Prometheus + Airflow standalone
#   scripts/stack.sh up-celery  the same with the CeleryExecutor: api-server, scheduler, dag-processor,
#                               triggerer and two Celery workers, each its own process (Redis db 2 is
#                               the broker, PostgreSQL the result backend)
#   scripts/stack.sh chromium   Debian's Chromium for the UI tests
#   scripts/stack.sh down       stop what this script started (never a service it merely reused)
#   scripts/stack.sh status
#
# State lives in .stack/ (git-ignored). Running `up` twice is harmless.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.stack"
VENV="$ROOT/.venv"
PG_HOST="${CLIENTFLOW_PG_HOST:-127.0.0.1}"
PG_PORT="${CLIENTFLOW_PG_PORT:-5432}"
REDIS_PORT="${CLIENTFLOW_REDIS_PORT:-6379}"
MARIADB_PORT="${CLIENTFLOW_MARIADB_PORT:-3306}"
S3_PORT="${CLIENTFLOW_S3_PORT:-5055}"
# moto listens here; the connections reach S3 at S3_PORT (the failure suite puts a faulty proxy between)
MOTO_PORT="${CLIENTFLOW_MOTO_PORT:-$S3_PORT}"
SMTP_PORT="${CLIENTFLOW_SMTP_PORT:-8025}"
AIRFLOW_PORT="${CLIENTFLOW_AIRFLOW_PORT:-8080}"
METRICS_PORT="${CLIENTFLOW_METRICS_PORT:-9469}"
PROMETHEUS_PORT="${CLIENTFLOW_PROMETHEUS_PORT:-9090}"
mkdir -p "$STATE"

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# The pid of the process listening on TCP port $1, found through /proc (no ss or lsof needed);
# nothing if no listener, or if it is another user's process this user cannot see.
listener_pid() {
  local hex inode fd
  hex=$(printf '%04X' "$1")
  inode=$(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
  { [ -n "$inode" ] && [ "$inode" != 0 ]; } || return 0
  for fd in /proc/[0-9]*/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then fd=${fd#/proc/}; echo "${fd%%/*}"; return 0; fi
  done
}

# The checkout whose stack holds port $1, when it is another clientflow checkout than this one:
# reusing that service would run the other checkout's code and settings. The listener's command
# line names its checkout's .venv or .stack; Airflow's api-server retitles itself ("airflow
# api_server -- ..."), so then its working directory, where `up` started it, says it. Nothing when
# the port is free, ours, or held by anything else.
foreign_stack() {
  local pid cmd other
  pid=$(listener_pid "$1"); [ -n "$pid" ] || return 0
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
  other=$(printf '%s' "$cmd" | grep -oE '[^ =]*/(\.venv/bin|\.stack)/' | head -n1 | sed -E 's#/(\.venv/bin|\.stack)/$##' || true)
  if [ -z "$other" ]; then
    other=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    [ -n "$other" ] && [ -f "$other/scripts/stack.sh" ] || return 0
  fi
  [ "$other" = "$ROOT" ] || [ "$other" = "$(cd "$ROOT" && pwd -P)" ] || echo "$other"
}

# Refuses (fails `up`) when port $2 of service $1 is held by another checkout's stack.
refuse_foreign() {
  local other; other=$(foreign_stack "$2")
  [ -z "$other" ] && return 0
  log "$1: port $2 is held by the stack of another checkout ($other); run 'make down' there, or give this" \
    "stack other ports (CLIENTFLOW_*_PORT, see scripts/stack.sh)"
  return 1
}

wait_port() {
  local host=$1 port=$2 what=$3 tries=${4:-120}
  for _ in $(seq 1 "$tries"); do port_open "$host" "$port" && return 0; sleep 0.5; done
  log "$what did not come up on $host:$port"; return 1
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then log "need root to apt-get install $*"; return 1; fi
  if [ ! -f "$STATE/.apt-updated" ]; then apt-get update -qq && touch "$STATE/.apt-updated"; fi
  # Keep the packages from starting their own servers on our ports: this script starts them.
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || { [ -z "$policy" ] || rm -f "$policy"; return 1; }
  [ -z "$policy" ] || rm -f "$policy"
}

ensure_postgres() {
  if command -v pg_isready >/dev/null && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    if psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
      log "PostgreSQL: reusing $PG_HOST:$PG_PORT"; return 0
    fi
    log "PostgreSQL on $PG_HOST:$PG_PORT does not accept user postgres without a password"; return 1
  fi
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  if [ -z "$bindir" ]; then log "PostgreSQL: installing from Debian"; apt_install postgresql postgresql-client
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1); fi
  local data="$STATE/postgres"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "PostgreSQL: initialising a cluster in $data (trust auth on loopback)"
    mkdir -p "$data" && chown postgres:postgres "$data" && chmod 700 "$data"
    runuser -u postgres -- "$bindir/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  mkdir -p "$STATE/pgsock" && chown postgres:postgres "$STATE/pgsock"
  runuser -u postgres -- "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-h $PG_HOST -p $PG_PORT -k $STATE/pgsock" start >/dev/null
  touch "$STATE/postgres.ours"
  log "PostgreSQL: started on $PG_HOST:$PG_PORT"
}

ensure_redis() {
  if port_open 127.0.0.1 "$REDIS_PORT"; then log "Redis: reusing 127.0.0.1:$REDIS_PORT"; return 0; fi
  command -v redis-server >/dev/null || { log "Redis: installing from Debian"; apt_install redis-server; }
  mkdir -p "$STATE/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$STATE/redis" --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
  wait_port 127.0.0.1 "$REDIS_PORT" Redis
  echo "$REDIS_PORT" >"$STATE/redis.ours"  # down stops this one, whatever port it is then given
  log "Redis: started on 127.0.0.1:$REDIS_PORT"
}

# Prometheus (Debian's package) scraping the pipeline's metrics server every 5 s; data in .stack/.
start_prometheus() {
  refuse_foreign Prometheus "$PROMETHEUS_PORT"
  if port_open 127.0.0.1 "$PROMETHEUS_PORT"; then log "Prometheus: already listening on $PROMETHEUS_PORT"; return 0; fi
  if ! command -v prometheus >/dev/null; then
    log "Prometheus: installing from Debian"
    apt_install prometheus || { log "Prometheus: not installed, so not started (the metrics server still runs)"; return 0; }
  fi
  mkdir -p "$STATE/prometheus"
  cat >"$STATE/prometheus.yml" <<YAML
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: clientflow
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
YAML
  start_bg prometheus "$PROMETHEUS_PORT" prometheus --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
}

# Debian's Chromium, for the UI tests (make test-stack); nothing else needs it.
ensure_chromium() {
  command -v chromium >/dev/null || { log "Chromium: installing from Debian"; apt_install chromium; }
}

# MariaDB: only the extractor's tests need it (a client source database); the pipeline does not.
ensure_mariadb() {
  if port_open 127.0.0.1 "$MARIADB_PORT"; then log "MariaDB: reusing 127.0.0.1:$MARIADB_PORT"; return 0; fi
  command -v mariadbd >/dev/null || command -v /usr/sbin/mariadbd >/dev/null \
    || { log "MariaDB: installing from Debian"; apt_install mariadb-server; }
  local data="$STATE/mariadb"
  if [ ! -d "$data/mysql" ]; then
    log "MariaDB: initialising $data (root without password, loopback only)"
    mkdir -p "$data" && chown mysql:mysql "$data"
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=normal \
      --skip-test-db >/dev/null
  fi
  mkdir -p "$STATE/mysqld" && chown mysql:mysql "$STATE/mysqld"
  nohup /usr/sbin/mariadbd --user=mysql --datadir="$data" --bind-address=127.0.0.1 --port="$MARIADB_PORT" \
    --socket="$STATE/mysqld/mysqld.sock" --pid-file="$STATE/mysqld/mysqld.pid" >"$STATE/mariadb.log" 2>&1 &
  wait_port 127.0.0.1 "$MARIADB_PORT" MariaDB
  touch "$STATE/mariadb.ours"
  log "MariaDB: started on 127.0.0.1:$MARIADB_PORT"
}

start_bg() {  # name port command...
  local name=$1 port=$2; shift 2
  refuse_foreign "$name" "$port"
  if port_open 127.0.0.1 "$port"; then log "$name: already listening on $port"; return 0; fi
  nohup "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  wait_port 127.0.0.1 "$port" "$name"
  log "$name: started on 127.0.0.1:$port (log .stack/$name.log)"
}

# dbt's fork server (clientflow/transform/dbt_forkserver.py): dbt imported once, and each batch's
# dbt build a fork of it, about 2 s sooner. Tasks find it through CLIENTFLOW_DBT_FORKSERVER; without
# it (not started, stopped, a socket path over 107 bytes) dbt starts on its own, as before.
start_dbt_forkserver() {
  local sock="$STATE/dbt.sock" pid
  if [ -S "$sock" ] && "$VENV/bin/python" -c 'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' \
      "$sock" 2>/dev/null; then
    log "dbt fork server: already serving .stack/dbt.sock"; return 0
  fi
  nohup "$ROOT/.venv-dbt/bin/python" "$ROOT/clientflow/transform/dbt_forkserver.py" "$sock" >"$STATE/dbt-forkserver.log" 2>&1 &
  pid=$!
  echo "$pid" >"$STATE/dbt-forkserver.pid"
  for _ in $(seq 1 240); do
    if [ -S "$sock" ]; then log "dbt fork server: serving .stack/dbt.sock (log .stack/dbt-forkserver.log)"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  log "dbt fork server: not serving (see .stack/dbt-forkserver.log); each dbt run starts dbt on its own"
}

airflow_env() {
  export AIRFLOW_HOME="$STATE/airflow"
  # `airflow` and `clientflow` of the project's virtualenv, for `eval "$(scripts/stack.sh airflow-env)"`.
  case ":$PATH:" in *":$ROOT/.venv/bin:"*) ;; *) export PATH="$ROOT/.venv/bin:$PATH" ;; esac
  export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
  export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://postgres@$PG_HOST:$PG_PORT/clientflow_airflow"
  # Airflow's LocalExecutor, whose workers fork with the third-party modules a task's DAG parse
  # imports already imported (clientflow/executor.py): about 0.2 s less per task.
  export AIRFLOW__CORE__EXECUTOR=clientflow.executor.PreloadingLocalExecutor
  # Pools of airflow_settings.yaml (created at up); the DAGs put each client's raw load in this one.
  export CLIENTFLOW_COPY_POOL=clientflow_staging_copy
  if [ "$(cat "$STATE/executor" 2>/dev/null || echo local)" = celery ]; then
    export AIRFLOW__CORE__EXECUTOR=CeleryExecutor
    export AIRFLOW__CELERY__BROKER_URL="redis://127.0.0.1:$REDIS_PORT/2"
    export AIRFLOW__CELERY__RESULT_BACKEND="db+postgresql://postgres@$PG_HOST:$PG_PORT/clientflow_airflow"
    export AIRFLOW__CELERY__WORKER_CONCURRENCY=4
    # The workers preload what a task's DAG parse imports, as the local executor does (clientflow/celery_config.py).
    export AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=clientflow.celery_config.CELERY_CONFIG
    export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$AIRFLOW_PORT/execution/"
    # Separate processes must share the secrets that standalone keeps to itself.
    [ -f "$STATE/airflow-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/airflow-secret"
    export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$STATE/airflow-secret")" AIRFLOW__API__SECRET_KEY="$(cat "$STATE/airflow-secret")"
    # A worker killed mid-task: its try is failed (and retried elsewhere) after a minute, not five.
    export AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=60
  fi
  export CLIENTFLOW_DBT_FORKSERVER="$STATE/dbt.sock"
  export AIRFLOW__COSMOS__ENABLE_TELEMETRY=False
  # Cosmos keeps each client's dbt partial-parse file (a batch's build parses only what changed)
  # with the stack's state, not in the machine's /tmp.
  export AIRFLOW__COSMOS__CACHE_DIR="$STATE/cosmos"
  export DO_NOT_TRACK=1
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$STATE/airflow/passwords.json"
  export AIRFLOW__API__PORT="$AIRFLOW_PORT"
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=15
  export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=15
  # The scheduler's sleep after a loop with nothing to do (default 1 s) is most of the wait between
  # one task's end and the next one's start: a batch's seven tasks waited 0.45-0.98 s each. A
  # quarter of a second keeps that wait short for the cost of a few more idle loops.
  export AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.25
  # Bucket events (clientflow.arrival.events): each client's DAG watches its SQS queue on moto;
  # the triggerer long-polls 20 s (a message ends the poll at once), then sleeps 1 s after an
  # empty poll.
  export CLIENTFLOW_EVENTS_QUEUE_URL="http://127.0.0.1:$S3_PORT/123456789012/{queue}"
  export CLIENTFLOW_EVENTS_WAIT_SECONDS=20 CLIENTFLOW_EVENTS_DELAY_SECONDS=1
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$VENV/bin:$PATH"
  eval "$("$VENV/bin/python" -m clientflow.settings_file)"
}

# Airflow's metadata database belongs to one stack home: its rows are encrypted with the home's
# Fernet key (airflow.cfg), so a database left by another clone's stack (triggers, connections)
# cannot be read here and crashes the triggerer. The database's comment names its home's id.
metadata_database() {
  local id owner sql="psql -h $PG_HOST -p $PG_PORT -U postgres -d postgres -Atq"
  [ -f "$STATE/stack-id" ] || head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/stack-id"
  id="clientflow stack $(cat "$STATE/stack-id")"
  owner=$($sql -c "select coalesce(shobj_description(oid, 'pg_database'), '-') from pg_database where datname = 'clientflow_airflow'")
  if [ -n "$owner" ] && [ "$owner" != "$id" ]; then
    log "Airflow: the metadata database clientflow_airflow was made by another stack home; rebuilding it"
    $sql -c "drop database clientflow_airflow with (force)" >/dev/null
    owner=""
  fi
  if [ -z "$owner" ]; then
    $sql -c "create database clientflow_airflow" >/dev/null
    $sql -c "comment on database clientflow_airflow is '$id'" >/dev/null
  fi
}

up() {
  ensure_postgres
  ensure_redis
  start_bg moto "$MOTO_PORT" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  # Every alert lands in the Maildir .stack/mail (read it with any mail reader, or the stack tests).
  start_bg smtp "$SMTP_PORT" "$VENV/bin/python" -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" -c aiosmtpd.handlers.Mailbox "$STATE/mail"
  "$VENV/bin/python" -m clientflow.bootstrap --reset-outdated --admin-dsn "postgresql://postgres@$PG_HOST:$PG_PORT/postgres"
  # the bucket, each client's SQS queue, and the bucket's manifest notifications to them
  "$VENV/bin/clientflow" bucket-events | sed 's/^/[stack] events: /'
  start_bg metrics "$METRICS_PORT" "$VENV/bin/clientflow" metrics-server --port "$METRICS_PORT"
  start_prometheus
  airflow_env
  start_dbt_forkserver
  mkdir -p "$AIRFLOW_HOME"
  [ -f "$AIRFLOW_HOME/passwords.json" ] || echo '{"admin": "admin"}' >"$AIRFLOW_HOME/passwords.json"
  refuse_foreign Airflow "$AIRFLOW_PORT"
  if ! port_open 127.0.0.1 "$AIRFLOW_PORT"; then
    metadata_database
    "$VENV/bin/airflow" db migrate >"$STATE/airflow-migrate.log" 2>&1
    "$VENV/bin/python" -m clientflow.settings_file --pools | while read -r name slots description; do
      "$VENV/bin/airflow" pools set "$name" "$slots" "$description" >/dev/null
    done
    if [ "$AIRFLOW__CORE__EXECUTOR" = CeleryExecutor ]; then
      start_celery_airflow
    else
      nohup "$VENV/bin/airflow" standalone >"$STATE/airflow.log" 2>&1 &
      echo $! >"$STATE/airflow.pid"
    fi
    # a freshly migrated metadata database on a busy machine: standalone took over a minute
    wait_port 127.0.0.1 "$AIRFLOW_PORT" "Airflow api-server" 480 || { tail -n 30 "$STATE/airflow.log" "$STATE/api-server.log" 2>/dev/null >&2; return 1; }
    log "Airflow ($AIRFLOW__CORE__EXECUTOR): http://127.0.0.1:$AIRFLOW_PORT (login admin / admin)"
  else
    log "Airflow: already on http://127.0.0.1:$AIRFLOW_PORT"
  fi
}

CELERY_PARTS="api-server scheduler dag-processor triggerer"

# Each Airflow service its own process; each worker in its own process group (setsid), so that
# `down` (or a test's SIGKILL) takes the worker's pool processes with it.
start_celery_airflow() {
  local part n
  for part in $CELERY_PARTS; do
    if [ "$part" = api-server ]; then
      nohup "$VENV/bin/airflow" api-server --port "$AIRFLOW_PORT" >"$STATE/$part.log" 2>&1 &
    else
      nohup "$VENV/bin/airflow" "$part" >"$STATE/$part.log" 2>&1 &
    fi
    echo $! >"$STATE/$part.pid"
  done
  for n in 1 2; do
    AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=$((8792 + n)) nohup setsid "$VENV/bin/airflow" celery worker \
      --celery-hostname "worker$n@%h" --concurrency 4 >"$STATE/worker$n.log" 2>&1 &
    echo $! >"$STATE/worker$n.pid"
  done
  log "Airflow: api-server, scheduler, dag-processor, triggerer, worker1, worker2 (logs .stack/<name>.log)"
}

stop_group() {  # a worker and its pool processes
  local name=$1 file="$STATE/$1.pid"
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "$name: stopped"
  fi
  rm -f "$file"
}

stop_pid() {
  local name=$1 file="$STATE/$1.pid"
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    pkill -TERM -P "$pid" 2>/dev/null || true; kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    log "$name: stopped"
  fi
  rm -f "$file"
}

down() {
  stop_pid airflow
  for part in worker1 worker2; do stop_group "$part"; done
  for part in $CELERY_PARTS; do stop_pid "$part"; done
  pkill -f "$STATE/airflow" 2>/dev/null || true
  stop_pid smtp
  stop_pid dbt-forkserver
  stop_pid prometheus
  stop_pid metrics
  stop_pid moto
  if [ -f "$STATE/redis.ours" ]; then
    local ours; ours=$(cat "$STATE/redis.ours"); ours=${ours:-$REDIS_PORT}
    redis-cli -p "$ours" shutdown nosave >/dev/null 2>&1 || true; rm -f "$STATE/redis.ours"; log "Redis: stopped ($ours)"
  fi
  if [ -f "$STATE/mariadb.ours" ]; then
    kill -TERM "$(cat "$STATE/mysqld/mysqld.pid" 2>/dev/null)" 2>/dev/null || true
    rm -f "$STATE/mariadb.ours"; log "MariaDB: stopped"
  fi
  if [ -f "$STATE/postgres.ours" ]; then
    local bindir; bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    runuser -u postgres -- "$bindir/pg_ctl" -D "$STATE/postgres" -m fast stop >/dev/null || true
    rm -f "$STATE/postgres.ours"; log "PostgreSQL: stopped"
  fi
}

status() {
  for pair in "PostgreSQL $PG_PORT" "Redis $REDIS_PORT" "S3(moto) $MOTO_PORT" "SMTP $SMTP_PORT" "Metrics $METRICS_PORT" \
              "Prometheus $PROMETHEUS_PORT" "Airflow $AIRFLOW_PORT"; do
    set -- $pair
    local other; other=$(foreign_stack "$2")
    if [ -n "$other" ]; then echo "$1: up on $2, the stack of another checkout ($other)"
    elif port_open 127.0.0.1 "$2"; then echo "$1: up on $2"; else echo "$1: down"; fi
  done
}

case "${1:-}" in
  services) ensure_postgres; ensure_redis; ensure_mariadb ;;
  chromium) ensure_chromium ;;
  up) echo local >"$STATE/executor"; up ;;
  up-celery) echo celery >"$STATE/executor"; up ;;
  down) down ;;
  status) status ;;
  airflow-env) airflow_env; export -p | grep -E '^declare -x (AIRFLOW|CLIENTFLOW_EVENTS|CLIENTFLOW_COPY_POOL|PYTHONPATH=|PATH=|DO_NOT_TRACK=)' ;;
  *) echo "usage: $0 services|up|down|status" >&2; exit 2 ;;
esac
