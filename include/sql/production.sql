-- Our practice platform's production schema.
--
-- Applied verbatim to the production database and, as the "dummy production" replica, to the
-- staging database, so constraints are exercised in staging before anything reaches production.
-- Every table carries the tenant key (client_id) as the first column of its primary key.
-- source_batch_date is the date of the batch that last wrote the row: promotion never lets an
-- older batch overwrite a row written by a newer one (a late upload of yesterday's files).
-- The caller sets search_path to the target schema (practice) before running this file.
--
-- Every CHECK runs once per row written, in both databases (4,000,000 times each for the benchmark's
-- first load), so a length is checked with length() and the characters with a regular expression
-- without a counted repeat: PostgreSQL's engine ran `client_id ~ '^[a-z][a-z0-9_]{0,39}$'` in 5.0 s
-- per 2,000,000 rows here, `client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40` (the same
-- names) in 0.9 s. Each rule is the same as the counted form's.

create table if not exists providers (
    client_id      text        not null check (client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40),
    provider_id    text        not null check (provider_id <> ''),
    first_name     text,
    last_name      text        not null check (last_name <> ''),
    specialty      text        not null check (
        specialty in ('general_dentistry', 'orthodontics', 'hygiene', 'optometry', 'ophthalmology', 'other')
    ),
    npi            text        check (npi ~ '^[0-9]+$' and length(npi) = 10),
    email          text        check (email = lower(email) and email like '%_@_%'),
    active         boolean     not null,
    ingestion_id   text        not null,
    source_batch_date date,
    synced_at      timestamptz not null default now(),
    job_id         text        not null,
    source_file    text        not null,
    source_row     bigint      not null,
    deleted_at     timestamptz,
    primary key (client_id, provider_id)
);

create table if not exists patients (
    client_id      text        not null check (client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40),
    patient_id     text        not null check (patient_id <> ''),
    first_name     text,
    last_name      text        not null check (last_name <> ''),
    date_of_birth  date        check (date_of_birth between date '1890-01-01' and date '2100-01-01'),
    sex            text        not null check (sex in ('female', 'male', 'other', 'unknown')),
    email          text        check (email = lower(email) and email like '%_@_%'),
    phone          text        check (phone ~ '^\+?[0-9]+$' and length(ltrim(phone, '+')) between 7 and 15),
    postal_code    text,
    created_at     timestamptz,
    ingestion_id   text        not null,
    source_batch_date date,
    synced_at      timestamptz not null default now(),
    job_id         text        not null,
    source_file    text        not null,
    source_row     bigint      not null,
    deleted_at     timestamptz,
    primary key (client_id, patient_id)
);

create table if not exists appointments (
    client_id         text        not null check (client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40),
    appointment_id    text        not null check (appointment_id <> ''),
    patient_id        text        not null,
    provider_id       text        not null,
    starts_at         timestamptz not null,
    duration_minutes  integer     not null check (duration_minutes between 5 and 480),
    status            text        not null check (status in ('scheduled', 'completed', 'cancelled', 'no_show')),
    reason            text,
    fee               numeric(10, 2) check (fee >= 0),
    ingestion_id   text        not null,
    source_batch_date date,
    synced_at      timestamptz not null default now(),
    job_id         text        not null,
    source_file    text        not null,
    source_row     bigint      not null,
    deleted_at     timestamptz,
    primary key (client_id, appointment_id),
    foreign key (client_id, patient_id) references patients (client_id, patient_id),
    foreign key (client_id, provider_id) references providers (client_id, provider_id)
);

create index if not exists appointments_patient_idx on appointments (client_id, patient_id);
create index if not exists appointments_provider_idx on appointments (client_id, provider_id);

-- Procedures performed at an appointment: a dental code (CDT, e.g. D1110) with the tooth, or an
-- eye-care code (CPT, e.g. 92004) with the eye.
create table if not exists procedures (
    client_id       text        not null check (client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40),
    procedure_id    text        not null check (procedure_id <> ''),
    appointment_id  text        not null,
    code_system     text        not null check (code_system in ('cdt', 'cpt')),
    code            text        not null,
    tooth           text        check (tooth ~ '^([1-9]|[12][0-9]|3[0-2]|[A-T])$'),
    eye             text        check (eye in ('right', 'left', 'both')),
    fee             numeric(10, 2) check (fee >= 0),
    ingestion_id   text        not null,
    source_batch_date date,
    synced_at      timestamptz not null default now(),
    job_id         text        not null,
    source_file    text        not null,
    source_row     bigint      not null,
    deleted_at     timestamptz,
    primary key (client_id, procedure_id),
    foreign key (client_id, appointment_id) references appointments (client_id, appointment_id),
    check ((code_system = 'cdt' and code ~ '^D[0-9]{4}$') or (code_system = 'cpt' and code ~ '^[0-9]{4}[0-9A-Z]$'))
);

create index if not exists procedures_appointment_idx on procedures (client_id, appointment_id);

-- The rows a batch wrote (ingestion_id names the batch that last wrote a row): its dbt tests in
-- dummy production, the counts that reconcile a batch, a first load's key check, tracing a batch.
-- Every row of a batch has the same key, so the index is small (deduplicated posting lists).
create index if not exists providers_batch_idx on providers (ingestion_id);
create index if not exists patients_batch_idx on patients (ingestion_id);
create index if not exists appointments_batch_idx on appointments (ingestion_id);
create index if not exists procedures_batch_idx on procedures (ingestion_id);

-- One row per promoted batch, written in the promotion's own transaction: if it is here, the
-- batch is in production (the ledger in the staging database may lag behind after a crash).
-- A row's promotion time is its batch's promoted_at here (join on ingestion_id): one row per
-- batch rather than a value rewritten on every row the batch wrote. fence_token is the client
-- lock's token of the run that promoted it last: a batch promoted once and re-offered has a row
-- here before its new run promotes, and only the token tells whether this run's promotion
-- committed. counts holds the promotion's figures per entity (offered, inserted, updated): a retry
-- of the same run after production committed (its ledger write failed) reads them instead of
-- merging again, which would find every row unchanged and record zeros.
create table if not exists promotions (
    client_id      text        not null check (client_id ~ '^[a-z][a-z0-9_]*$' and length(client_id) <= 40),
    ingestion_id   text        not null,
    batch_date     date        not null,
    promoted_at    timestamptz not null,
    rows_written   jsonb       not null,
    fence_token    bigint,
    counts         jsonb,
    primary key (client_id, ingestion_id)
);
alter table promotions add column if not exists fence_token bigint;  -- databases made before it
alter table promotions add column if not exists counts jsonb;        -- databases made before it

-- Neither the promoter (production) nor dbt's role (dummy production, the staging database's copy
-- of this file) owns a table, so neither may ANALYZE one. After a client's first load (or any large
-- change set) the statistics still describe the tables without those rows until autovacuum comes
-- round (if it runs at all: it may be off), and the next batch's lookups are planned for a client
-- of no rows: a nested loop that compares every incoming row with every row of the client (minutes
-- for 150,000 rows instead of a second). This function, owned by the tables' owner, refreshes one
-- entity's statistics, and nothing else.
create or replace function refresh_statistics(entity text) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    if entity is null or entity not in ('providers', 'patients', 'appointments', 'procedures') then
        raise exception 'refresh_statistics: not a production entity' using errcode = '22023';
    end if;
    execute format('analyze practice.%I', entity);
end
$$;
revoke all on function refresh_statistics(text) from public;
