#!/usr/bin/env bash
# The image's entrypoint (Dockerfile ENTRYPOINT, under dumb-init): beside an Airflow process that
# runs tasks, it starts dbt's fork server (clientflow/transform/dbt_forkserver.py), as
# scripts/stack.sh does on a developer's machine, then hands the same arguments to the official
# image's entrypoint. Each batch's dbt build is then a fork of a process that has dbt imported,
# about 2 s sooner than a new dbt (docs/benchmarks.md).
#
# Runs tasks: `celery worker` (Compose's and the Helm chart's workers, however the command is
# spelt: `celery worker`, `airflow celery worker`, `bash -c "exec airflow celery worker"`),
# `standalone`, and `scheduler` under a LocalExecutor. Any other command (api-server, triggerer,
# dag-processor, migrations, a shell) goes straight to the official entrypoint.
#
# The server's socket is $CLIENTFLOW_DBT_FORKSERVER (default /tmp/clientflow-dbt/dbt.sock, at most
# 107 bytes); CLIENTFLOW_DBT_FORKSERVER=off starts none. Whatever becomes of the server (not up
# yet, failed, stopped), a task's dbt run starts dbt on its own instead (dbt_scrubbed.py), so
# nothing here can stop the container's command from starting. The server is left to dumb-init
# (PID 1) to reap, and dumb-init's signals (docker stop, a pod's deletion) reach it with the rest
# of the process group; it stops on SIGTERM.
set -euo pipefail

home="${CLIENTFLOW_HOME:-/opt/clientflow}"
next="${CLIENTFLOW_NEXT_ENTRYPOINT:-/entrypoint}"

say() { echo "clientflow entrypoint: $*" >&2; }

runs_tasks() {
  local words=" $* "
  words="${words//[$'\n\t']/ }"
  case "$words" in
    *" celery worker "* | *" standalone "*) return 0 ;;
    *" scheduler "*) [[ "${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}" == *LocalExecutor* ]] ;;
    *) return 1 ;;
  esac
}

start_dbt_forkserver() {
  local sock="$1" python="$home/.venv-dbt/bin/python" server="$home/clientflow/transform/dbt_forkserver.py" pid
  if [ "${#sock}" -gt 107 ]; then
    say "dbt fork server: socket path over 107 bytes; each dbt run starts dbt on its own"
    return 1
  fi
  if ! mkdir -p -m 0700 "$(dirname "$sock")"; then
    say "dbt fork server: cannot make the socket's folder; each dbt run starts dbt on its own"
    return 1
  fi
  # Started from a subshell, so the server is not a child of the Airflow command this script
  # becomes (which may wait for children of its own): its parent is PID 1. Its output goes to
  # the container's log; it logs nothing of a request.
  pid=$("$python" "$server" "$sock" </dev/null >&2 & echo $!)
  for _ in $(seq 1 120); do
    if [ -S "$sock" ]; then
      say "dbt fork server: serving $sock (pid $pid)"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "dbt fork server: still starting (pid $pid); dbt runs before it serves start dbt on their own"
    return 0
  fi
  say "dbt fork server: exited before serving (its lines above); each dbt run starts dbt on its own"
  return 1
}

sock="${CLIENTFLOW_DBT_FORKSERVER:-/tmp/clientflow-dbt/dbt.sock}"
if [ "$sock" = off ]; then
  unset CLIENTFLOW_DBT_FORKSERVER
elif runs_tasks "$@"; then
  if start_dbt_forkserver "$sock"; then
    export CLIENTFLOW_DBT_FORKSERVER="$sock"
  else
    unset CLIENTFLOW_DBT_FORKSERVER
  fi
fi
exec "$next" "$@"
