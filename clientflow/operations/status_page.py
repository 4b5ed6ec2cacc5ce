"""The status page inside the Airflow UI: a FastAPI app that the plugin in ``plugins/`` mounts at
``/clientflow`` (the UI's navigation shows it through an ``external_views`` entry).

Per client: the last promoted batch and its age, batches by state, the rows of the newest batch at
each stage, schema versions and drift events, open incidents; per batch: its timeline from the
ledger (files, states, stage times), each linked to its DAG run and task logs. ``/api/...`` serves
the same as JSON, described by ``/openapi.json``.

Airflow mounts plugin apps without its authentication, so every route here, the OpenAPI document
included, requires an Airflow user allowed to read DAGs (the auth manager's own check, from the
session cookie of the UI or a bearer token). It reads the ledger through the read-only role of the
``clientflow_status`` connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse
from jinja2 import Environment, select_autoescape

from clientflow.config import ConnectionIds, PostgresSettings
from clientflow.operations import status

STATUS_CONN_ID = ConnectionIds().status
UI_RUN = "/dags/{dag}/runs/{run}"
UI_TASK = "/dags/{dag}/runs/{run}/tasks/{task}"

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_BASE = """<!doctype html><html><head><meta charset="utf-8"><title>{{ title }}</title><style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1f2937}table{border-collapse:collapse;margin:.5rem 0 1.5rem}
th,td{border:1px solid #d1d5db;padding:.3rem .6rem;text-align:left;font-size:.9rem}th{background:#f3f4f6}
.SUCCESS{color:#15803d}.FAILED{color:#b91c1c;font-weight:600}.PROCESSING,.PENDING{color:#a16207}
td.error{max-width:34rem;overflow-wrap:anywhere;font-size:.8rem}
.incident{background:#fee2e2;padding:.2rem .5rem;border-radius:.3rem}
</style></head><body><h1>{{ title }}</h1>{% block body %}{% endblock %}
<p><small>From the ledger; no patient value is shown. JSON: <a href="{{ api }}">{{ api }}</a></small></p></body></html>"""
_OVERVIEW = _ENV.from_string("""{% extends base %}{% block body %}
<table id="clients"><tr><th>Client</th><th>Last promoted batch</th><th>Age</th><th>Waiting</th><th>Running</th>
<th>Failed</th><th>Promoted</th><th>Duplicates</th><th>Newest batch</th><th>Rows: manifest / raw / rejects / dummy / production</th>
<th>Incidents</th></tr>
{% for c in clients %}<tr data-client="{{ c.client }}"><td><a href="{{ prefix }}/clients/{{ c.client }}">{{ c.client }}</a></td>
<td>{% if c.last_promoted %}<a href="{{ prefix }}/batches/{{ c.last_promoted.ingestion_id }}">{{ c.last_promoted.batch_date }}
run {{ c.last_promoted.run_id }}</a>{% else %}none{% endif %}</td><td>{{ age(c.last_promoted_age_seconds) }}</td>
<td>{{ c.batches.PENDING }}</td><td>{{ c.batches.PROCESSING }}</td><td class="{{ 'FAILED' if c.batches.FAILED }}">{{ c.batches.FAILED }}</td>
<td>{{ c.batches.SUCCESS }}</td><td>{{ c.duplicates }}</td>
<td>{% if c.last_batch %}<a class="{{ c.last_batch.state }}" href="{{ prefix }}/batches/{{ c.last_batch.ingestion_id }}">{{ c.last_batch.state }}</a>{% endif %}</td>
<td>{% if c.last_batch_rows %}{{ rows(c.last_batch_rows) }}{% endif %}</td>
<td>{% for i in c.open_incidents %}<span class="incident">{{ i }}</span> {% endfor %}</td></tr>{% endfor %}
</table>{% endblock %}""", globals={"base": _ENV.from_string(_BASE)})
_CLIENT = _ENV.from_string("""{% extends base %}{% block body %}
<p><a href="{{ prefix }}/">All clients</a></p>
<h2>Batches</h2><table id="batches"><tr><th>Date</th><th>Run</th><th>State</th><th>Updated</th><th>Job (ingestion id)</th><th>DAG run</th><th>Error</th></tr>
{% for b in c.recent %}<tr data-state="{{ b.state }}"><td>{{ b.batch_date }}</td><td>{{ b.run_id }}</td><td class="{{ b.state }}">{{ b.state }}</td>
<td>{{ b.updated_at.strftime('%Y-%m-%d %H:%M:%S') }} UTC</td><td><a href="{{ prefix }}/batches/{{ b.ingestion_id }}">{{ b.ingestion_id }}</a></td>
<td>{% if b.airflow_run_id %}<a target="_top" href="{{ run_url(b) }}">{{ b.airflow_run_id }}</a>{% endif %}</td><td class="error">{{ b.error or '' }}</td></tr>{% endfor %}
</table>
<h2>Schemas</h2><table id="schemas"><tr><th>Table</th><th>Version</th><th>Drift events</th><th>Last change</th><th>Registered</th></tr>
{% for s in c.schemas %}<tr><td>{{ s.table }}</td><td>{{ s.version }}</td><td>{{ s.drift_events }}</td><td>{{ s.last_change or '' }}</td>
<td>{{ s.registered_at.strftime('%Y-%m-%d %H:%M') }}</td></tr>{% endfor %}</table>{% endblock %}""",
                             globals={"base": _ENV.from_string(_BASE)})
_BATCH = _ENV.from_string("""{% extends base %}{% block body %}
<p><a href="{{ prefix }}/clients/{{ t.client }}">{{ t.client }}</a> · batch {{ t.batch.batch_date }} run {{ t.batch.run_id }}
· <span class="{{ t.batch.state }}">{{ t.batch.state }}</span>{% if t.batch.airflow_run_id %} · <a target="_top" href="{{ run_url(t.batch) }}">DAG run</a>{% endif %}</p>
<p>Rows: {{ rows(t.rows) }}</p>
<h2>Files</h2><table id="files"><tr><th>Table</th><th>Job id</th><th>Mode</th><th>Rows</th><th>Data file</th><th>Manifest</th></tr>
{% for f in t.files %}<tr><td>{{ f.table }}</td><td>{{ f.job_id }}</td><td>{{ f.extraction_mode }}</td><td>{{ f.row_count }}</td>
<td>{{ f.source_file }}</td><td>{{ f.manifest_file }}</td></tr>{% endfor %}</table>
<h2>Timeline</h2><table id="timeline"><tr><th>At (UTC)</th><th>State</th><th>Airflow run</th><th>Detail</th></tr>
{% for e in t.events %}<tr><td>{{ e.at.strftime('%Y-%m-%d %H:%M:%S') }}</td><td class="{{ e.state }}">{{ e.state }}</td>
<td>{% if e.airflow_run_id and t.batch.airflow_dag_id %}<a target="_top" href="{{ run_url(t.batch, e.airflow_run_id) }}">{{ e.airflow_run_id }}</a>{% else %}{{ e.airflow_run_id or '' }}{% endif %}</td>
<td>{{ e.detail or '' }}</td></tr>{% endfor %}</table>
<h2>Stages</h2><table id="stages"><tr><th>Stage</th><th>Outcome</th><th>Seconds</th><th>Started (UTC)</th><th>Log</th></tr>
{% for s in t.stages %}<tr><td>{{ s.stage }}</td><td>{{ s.outcome }}</td><td>{{ '%.1f' % s.seconds }}</td><td>{{ s.started_at.strftime('%H:%M:%S') }}</td>
<td>{% if s.airflow_run_id and t.batch.airflow_dag_id and s.stage != 'transform' %}<a target="_top" href="{{ task_url(t.batch, s) }}">task log</a>{% endif %}</td></tr>{% endfor %}
</table>{% endblock %}""", globals={"base": _ENV.from_string(_BASE)})


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours = seconds / 3600
    return f"{seconds / 60:.0f} min" if hours < 1 else f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _rows(r: status.StageCounts) -> str:
    return " / ".join("-" if v is None else f"{v:,}" for v in (r.manifest, r.raw, r.rejects, r.dummy_production,
                                                                 r.production))


def _run_url(b: status.BatchRow, run: str | None = None) -> str:
    return UI_RUN.format(dag=b.airflow_dag_id, run=run or b.airflow_run_id)


def _task_url(b: status.BatchRow, s: status.StageRun) -> str:
    return UI_TASK.format(dag=b.airflow_dag_id, run=s.airflow_run_id, task=s.stage)


HELPERS = {"age": _age, "rows": _rows, "run_url": _run_url, "task_url": _task_url}


def status_database() -> PostgresSettings:
    """The read-only role's connection, as the api-server sees it (environment or metadata DB)."""
    from airflow.models.connection import Connection

    conn = Connection.get_connection_from_secrets(STATUS_CONN_ID)
    return PostgresSettings.from_connection(conn.host, conn.port, conn.schema, conn.login, conn.password,
                                            conn.extra_dejson)


def _clients(conn: Any) -> list[str]:
    from clientflow.mapping import mapping_files

    return sorted({p.stem for p in mapping_files()} | set(status.known_clients(conn)))


def create_app(database: Any = status_database, auth: Any = None, prefix: str = "/clientflow") -> FastAPI:
    """The app; ``auth`` is the dependency that admits a request (default: an Airflow user who may
    read DAGs), ``database`` returns the read-only role's settings."""
    import psycopg

    if auth is None:
        from airflow.api_fastapi.core_api.security import requires_access_dag

        auth = requires_access_dag("GET")
    app = FastAPI(title="clientflow status", version="1", openapi_url=None, docs_url=None, redoc_url=None,
                  dependencies=[Depends(auth)],
                  description="Per client and per batch state of the clientflow pipeline, from its ledger.")

    def connection() -> Iterator[Any]:
        with psycopg.connect(database().conninfo(), connect_timeout=10) as conn:
            conn.read_only = True
            yield conn

    db = Depends(connection)

    def page(template: Any, title: str, api: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(template.render(title=title, api=prefix + api, prefix=prefix, **HELPERS, **values))

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/clients", response_model=list[status.ClientStatus], tags=["status"])
    def api_clients(conn: Any = db) -> list[status.ClientStatus]:
        now = datetime.now(UTC)
        return [status.client_status(conn, c, now) for c in _clients(conn)]

    @app.get("/api/clients/{client}", response_model=status.ClientStatus, tags=["status"])
    def api_client(client: str, conn: Any = db) -> status.ClientStatus:
        if client not in _clients(conn):
            raise HTTPException(404, f"no client {client!r}")
        return status.client_status(conn, client)

    @app.get("/api/batches/{ingestion_id}", response_model=status.BatchTimeline, tags=["status"])
    def api_batch(ingestion_id: str, conn: Any = db) -> status.BatchTimeline:
        found = status.batch_timeline(conn, ingestion_id)
        if found is None:
            raise HTTPException(404, f"no batch {ingestion_id!r}")
        return found

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    @app.get("/status", response_class=HTMLResponse, include_in_schema=False)
    def overview(conn: Any = db) -> HTMLResponse:
        return page(_OVERVIEW, "clientflow: clients", "/api/clients", clients=api_clients(conn))

    @app.get("/clients/{client}", response_class=HTMLResponse, include_in_schema=False)
    def client_page(client: str, conn: Any = db) -> HTMLResponse:
        return page(_CLIENT, f"clientflow: {client}", f"/api/clients/{client}", c=api_client(client, conn))

    @app.get("/batches/{ingestion_id}", response_class=HTMLResponse, include_in_schema=False)
    def batch_page(ingestion_id: str, conn: Any = db) -> HTMLResponse:
        return page(_BATCH, f"clientflow: batch {ingestion_id}", f"/api/batches/{ingestion_id}",
                    t=api_batch(ingestion_id, conn))

    return app
