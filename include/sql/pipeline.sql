-- The pipeline's own bookkeeping, in the staging database (schema pipeline).
-- PostgreSQL is the source of truth for job state; Redis only holds locks and a fast-path cache.

create schema if not exists pipeline;

-- One row per batch: one extractor run (run_id) of one client for one date.
-- ingestion_id is derived from the client, date and the job ids of the batch's files, so the same
-- content extracted twice gets the same ingestion_id.
create table if not exists pipeline.batches (
    ingestion_id    text        primary key,
    client_name     text        not null,
    batch_date      date        not null,
    run_id          text        not null,
    state           text        not null check (state in ('PENDING', 'PROCESSING', 'SUCCESS', 'FAILED', 'DUPLICATE', 'REOFFERED')),
    airflow_dag_id  text,
    airflow_run_id  text,
    error           text,
    created_at      timestamptz not null default clock_timestamp(),
    updated_at      timestamptz not null default clock_timestamp()
);
-- The fencing token of the run that last took the batch up: a run whose lock was taken over may not
-- record the batch's state any more.
alter table pipeline.batches add column if not exists fence_token bigint;
create index if not exists batches_client_state_idx on pipeline.batches (client_name, state, batch_date);

-- One row per file of a batch: the job id of the extractor's manifest, traceable to the S3 object.
create table if not exists pipeline.jobs (
    job_id          text        not null,
    ingestion_id    text        not null references pipeline.batches (ingestion_id),
    client_name     text        not null,
    table_name      text        not null,
    source_file     text        not null,
    manifest_file   text        not null,
    row_count       bigint      not null,
    sha256          text        not null,
    primary key (job_id, ingestion_id)
);

-- How the extractor chose each file's rows (its manifest's extraction): a full snapshot may
-- soft-delete what it no longer holds, an incremental file never does.
alter table pipeline.jobs add column if not exists extraction_mode text not null default 'full'
    check (extraction_mode in ('full', 'incremental'));
alter table pipeline.jobs add column if not exists cursor_column text;

-- Every state change, append-only.
create table if not exists pipeline.batch_events (
    event_id        bigserial   primary key,
    ingestion_id    text        not null references pipeline.batches (ingestion_id),
    state           text        not null,
    airflow_run_id  text,
    detail          text,
    at              timestamptz not null default clock_timestamp()
);
-- The S3 data files the event concerned (for DUPLICATE: the re-delivered run's files).
alter table pipeline.batch_events add column if not exists source_files text[];
create index if not exists batch_events_ingestion_idx on pipeline.batch_events (ingestion_id, event_id);

-- Versioned column schemas of each client table, as the manifests declared them.
create table if not exists pipeline.schema_registry (
    client_name     text        not null,
    table_name      text        not null,
    version         integer     not null,
    fingerprint     text        not null,
    columns         jsonb       not null,
    ingestion_id    text        not null,
    registered_at   timestamptz not null default clock_timestamp(),
    primary key (client_name, table_name, version)
);
-- What changed from the previous version (added, removed, guessed renames, type changes).
alter table pipeline.schema_registry add column if not exists change text;

-- Fencing tokens of the per-client Redis lock: a write commits only if its token is current.
create table if not exists pipeline.client_fence (
    client_name     text        primary key,
    token           bigint      not null,
    holder          text        not null,
    acquired_at     timestamptz not null default clock_timestamp()
);

-- Set when the holder's batch failed (clientflow.pipeline.mark_failed released its lock and undid
-- its rows in dummy production): a task of that run cleared on its own may not write any more.
alter table pipeline.client_fence add column if not exists released boolean not null default false;

-- The one definition of "this run still owns the client", used by the pipeline's write
-- transactions (clientflow.operations.locks.check) and by every dbt model (macro fence_check): lock
-- the client's fence row (shared: the run's own transactions and dbt's threads run side by side)
-- until the caller's transaction ends, so a newer holder cannot take the client over (its update
-- of the row waits) while this write is under way; and refuse a token that is not the current one
-- (SQLSTATE CF001, the current token in DETAIL), or whose batch failed (CF002).
-- Security definer (run as the ledger's owner, with a fixed search_path): dbt's role may lock the
-- fence row this way without any privilege on the ledger's tables (clientflow.bootstrap).
create or replace function pipeline.check_fence(client text, expected bigint) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
    current_token bigint;
    is_released boolean;
begin
    select token, released into current_token, is_released from pipeline.client_fence
    where client_name = client for share;
    if current_token is distinct from expected then
        raise exception 'clientflow: fencing token % of client % is stale: a newer run took the lock over',
            expected, client
            using errcode = 'CF001', detail = coalesce(current_token::text, 'none');
    end if;
    if is_released then
        raise exception 'clientflow: the lock of client % (token %) was released when its batch failed, and the '
            'batch was undone in dummy production: start the batch again at ingest (clear the run from its '
            'ingest task, or trigger the DAG for the batch)', client, expected
            using errcode = 'CF002';
    end if;
end
$$;

-- Calendar checks for the staging models (dbt/macros/staging/*): a value that matches a date
-- format's shape is read only if it names a real day and time, so 02/30/2024 becomes a rejected
-- value instead of a query that fails on it. Inlined by the planner (SQL, immutable).
create or replace function pipeline.valid_ymd(y integer, m integer, d integer) returns boolean
language sql immutable parallel safe as $$
    select y between 1 and 9999 and m between 1 and 12 and d between 1 and case
        when m in (4, 6, 9, 11) then 30
        when m = 2 then case when (y % 4 = 0 and y % 100 <> 0) or y % 400 = 0 then 29 else 28 end
        else 31 end
$$;

create or replace function pipeline.valid_hms(h integer, mi integer, s integer) returns boolean
language sql immutable parallel safe as $$
    select h between 0 and 23 and mi between 0 and 59 and s between 0 and 59
$$;

-- Values a batch refused: one row per refused value (or orphaned reference), named by its row and
-- column and the rule it broke; never the value itself (it stays in the raw table and the bucket).
create table if not exists pipeline.rejects (
    ingestion_id    text        not null references pipeline.batches (ingestion_id),
    client_name     text        not null,
    job_id          text,
    table_name      text        not null,
    entity          text        not null,
    source_key      text,
    source_file     text        not null,
    source_row      bigint      not null,
    column_name     text        not null,
    rule            text        not null,
    reason          text        not null,
    recorded_at     timestamptz not null default clock_timestamp(),
    primary key (ingestion_id, table_name, source_row, column_name)
);
create index if not exists rejects_client_idx on pipeline.rejects (client_name, recorded_at);

-- What each validated batch looked like, per entity: the anomaly gates compare a batch with the
-- client's previous promoted one (row counts, null rates per column, unmapped values, rejects).
create table if not exists pipeline.batch_profiles (
    ingestion_id    text        not null references pipeline.batches (ingestion_id),
    entity          text        not null,
    full_snapshot   boolean     not null,
    rows_received   bigint      not null,
    rows_kept       bigint      not null,
    rows_refused    bigint      not null,
    nulls           jsonb       not null,
    unmapped        jsonb       not null,
    profiled_at     timestamptz not null default clock_timestamp(),
    primary key (ingestion_id, entity)
);

-- A data engineer's acceptance of a batch a gate stopped: who, why, and which gates; the next run
-- of the batch passes those gates (the ledger records an ACCEPTED event too).
create table if not exists pipeline.acceptances (
    ingestion_id    text        not null references pipeline.batches (ingestion_id),
    accepted_by     text        not null,
    reason          text        not null,
    gates           text[]      not null,
    accepted_at     timestamptz not null default clock_timestamp()
);

-- The foreign-key check of a batch's writes, once per key and batch (the staging models'
-- dummy_upsert, the promotion): with per-row triggers off, `orphans` rows of `what` refer to no
-- parent; any is an error, as the trigger's would have been (SQLSTATE 23503).
create or replace function pipeline.require_parents(orphans bigint, what text) returns void
language plpgsql as $$
begin
    if orphans > 0 then
        raise exception 'clientflow: % row(s) of % refer to no parent row', orphans, what
            using errcode = '23503';
    end if;
end
$$;

-- Per client table: its newest batch, its newest full snapshot and what became of it, the newest
-- promoted full snapshot, and the incremental batches promoted since. A table declared full_snapshot in the mapping deletes only through a full snapshot, so a
-- data engineer reads here how long ago the client last sent one (and whether it promoted).
create or replace view pipeline.table_snapshots as
with files as (
    select j.client_name, j.table_name, j.extraction_mode, j.row_count, b.ingestion_id, b.batch_date,
           b.run_id, b.state, b.updated_at
    from pipeline.jobs j
    join pipeline.batches b using (ingestion_id)
    where b.state <> 'DUPLICATE'
),
last_full as (
    select distinct on (client_name, table_name)
        client_name, table_name, ingestion_id, batch_date, run_id, state, row_count, updated_at
    from files
    where extraction_mode = 'full'
    order by client_name, table_name, batch_date desc, updated_at desc
),
last_any as (
    select distinct on (client_name, table_name)
        client_name, table_name, extraction_mode, batch_date, state
    from files
    order by client_name, table_name, batch_date desc, updated_at desc
)
select
    a.client_name,
    a.table_name,
    a.extraction_mode           as last_mode,
    a.batch_date                as last_batch_date,
    a.state                     as last_state,
    f.ingestion_id              as last_full_ingestion_id,
    f.batch_date                as last_full_batch_date,
    f.run_id                    as last_full_run_id,
    f.state                     as last_full_state,
    f.row_count                 as last_full_rows,
    (select max(p.batch_date) from files p
     where p.client_name = a.client_name and p.table_name = a.table_name and p.extraction_mode = 'full'
       and p.state = 'SUCCESS') as last_promoted_full_batch_date,
    (select count(*) from files i
     where i.client_name = a.client_name and i.table_name = a.table_name and i.extraction_mode = 'incremental'
       and i.state = 'SUCCESS' and (f.batch_date is null or i.batch_date >= f.batch_date)) as incremental_since_full
from last_any a
left join last_full f using (client_name, table_name);

-- Conditions of a client that on-call hears about once when they start and once when they end
-- (clientflow.operations.incidents): repeated failures, stale data, a backlog in the bucket,
-- failed batches left alone. At most one open incident per client and kind.
create table if not exists pipeline.incidents (
    incident_id     bigserial   primary key,
    client_name     text        not null,
    kind            text        not null,
    detail          text        not null,
    opened_at       timestamptz not null default clock_timestamp(),
    closed_at       timestamptz,
    closed_how      text
);
create unique index if not exists incidents_open_idx on pipeline.incidents (client_name, kind) where closed_at is null;
-- The kinds (clientflow.operations.incidents.KINDS); replaced as a whole when one is added.
alter table pipeline.incidents drop constraint if exists incidents_kind_check;
alter table pipeline.incidents add constraint incidents_kind_check
    check (kind in ('failing', 'stale', 'backlog', 'failed_unreprocessed', 'incomplete', 'stuck'));

-- How long each stage of each run took (clientflow.operations.timing): the status page and the
-- metrics read it. transform is the span between ingest's end and validate's start, in which the
-- dbt task group runs (scheduling gaps between its tasks included).
create table if not exists pipeline.stage_runs (
    stage_run_id    bigserial   primary key,
    client_name     text        not null,
    ingestion_id    text,
    batch_date      date,
    stage           text        not null,
    airflow_run_id  text,
    outcome         text        not null check (outcome in ('success', 'failed', 'skipped', 'waiting')),
    started_at      timestamptz not null,
    finished_at     timestamptz not null default clock_timestamp()
);
create index if not exists stage_runs_client_idx on pipeline.stage_runs (client_name, finished_at);

-- What the promotion did, per entity (offered, inserted, updated, unchanged): the status page's
-- production figures, without reading production.
alter table pipeline.batches add column if not exists promoted jsonb;
