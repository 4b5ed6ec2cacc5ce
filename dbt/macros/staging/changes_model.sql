{#
    The change set of one entity for this batch: the rows of dummy production (practice.<entity>)
    this batch writes, in production's columns, with `change` = insert | update | revive | delete.

    - insert: a kept row (occurrence 1, no refused value) whose key dummy production lacks;
    - update: a kept row whose business columns differ, unless dummy production's row comes
      from a newer batch (source_batch_date): an older batch never overwrites a newer one;
    - revive: a kept row whose row in dummy production was soft-deleted;
    - delete: a row of dummy production a full snapshot no longer holds (snapshot_deletes), or a
      child of a parent deleted in this batch that the batch does not hold either. Its values and
      lineage stay; deleted_at is set and ingestion_id names the batch that deleted it.
    Unchanged rows are not in the change set, so nothing rewrites them.
#}
{% macro changes_model(entity, key, business, parents=[]) -%}
{%- set client = sql_literal(var('client')) -%}
{%- set others = business | reject('in', ['client_id']) | list -%}
with kept as (
    select * from {{ ref('stg_' ~ entity) }}
    where occurrence = 1 and not has_error
),

{#- Not materialized: each use is planned on its own, so a small batch looks its keys up by index
    instead of copying every row of the client (1-2 million) into a temporary store first. #}
current_rows as not materialized (
    select * from {{ dummy_production(entity) }}
    where client_id = {{ client }}
),

upserts as (
    select
        {%- for c in business %}
        k.{{ c }},
        {%- endfor %}
        {{ batch_ingestion_id() }}::text as ingestion_id,
        {{ batch_date() }} as source_batch_date,
        now() as synced_at,
        k.job_id,
        k.source_file,
        k.source_row,
        null::timestamptz as deleted_at,
        case when c.{{ key }} is null then 'insert' when c.deleted_at is not null then 'revive' else 'update' end
            as change
    from kept as k
    left join current_rows as c on c.{{ key }} = k.{{ key }}
    where c.{{ key }} is null
        or ((c.source_batch_date is null or c.source_batch_date <= {{ batch_date() }})
            and (c.deleted_at is not null
                or ({% for col in others %}k.{{ col }}{{ ", " if not loop.last }}{% endfor %})
                is distinct from ({% for col in others %}c.{{ col }}{{ ", " if not loop.last }}{% endfor %})))
),

absent as (
    select c.*
    from current_rows as c
    where {{ snapshot_deletes(entity, key) }}
        and c.deleted_at is null
        and (c.source_batch_date is null or c.source_batch_date <= {{ batch_date() }})
        and not exists (select 1 from {{ ref('stg_' ~ entity) }} as s where s.{{ key }} = c.{{ key }})
    {%- for fk in parents %}
    union
    select c.*
    from current_rows as c
    where c.deleted_at is null
        and (c.source_batch_date is null or c.source_batch_date <= {{ batch_date() }})
        and c.{{ fk['column'] }} in (
            select d.{{ fk['column'] }} from {{ ref('changes_' ~ fk['entity']) }} as d
            where d.change = 'delete'
        )
        and not exists (
            select 1 from {{ ref('stg_' ~ entity) }} as k
            where k.{{ key }} = c.{{ key }} and k.occurrence = 1 and not k.has_error
        )
    {%- endfor %}
),

deletes as (
    select
        {%- for c in business %}
        a.{{ c }},
        {%- endfor %}
        {{ batch_ingestion_id() }}::text as ingestion_id,
        {{ batch_date() }} as source_batch_date,
        now() as synced_at,
        a.job_id,
        a.source_file,
        a.source_row,
        now() as deleted_at,
        'delete' as change
    from absent as a
),

final as (
    select * from upserts
    union all
    select * from deletes
)

{#- In key order: dummy production and then production insert the rows as the change set holds
    them, and a primary key filled in its own order costs less than one filled at random (2,000,000
    appointments into a copy of the table with its four indexes: 40.5 s with this sort, 43.8 s in
    the order a hash join left them). #}
select * from final
order by {{ index_order(key) }}
{%- endmacro %}


{#
    The key, for sorting rows into the order of its index. In a database collated C, POSIX or
    C.UTF-8 (what scripts/stack.sh creates) text sorts by its bytes (C.UTF-8 compares code
    points, the bytes' order in UTF-8), and saying `collate "C"` lets PostgreSQL sort on
    abbreviated keys instead of calling the C library for every comparison: a first load's
    changes_appointments (2,000,000 rows) took 6.5 s instead of 8.5 s (alternated runs,
    2026-12-06). In a database of another collation the key sorts as its index does.
#}
{% macro index_order(key) -%}
    {%- set collation = '' -%}
    {%- if execute -%}
        {%- set collation = run_query("select datcollate from pg_database where datname = current_database()").columns[0].values()[0] -%}
    {%- endif -%}
    {{ key }}{% if collation in ['C', 'POSIX', 'C.UTF-8', 'C.utf8'] %} collate "C"{% endif %}
{%- endmacro %}


{#
    SQL that is true when this batch may soft-delete the entity's rows it does not hold: every
    client table that feeds the entity is declared a full snapshot in the mapping, and this batch's
    file of each is one (its manifest's extraction mode, recorded in pipeline.jobs: an incremental
    file holds only the rows that changed), and no row of the batch has a refused key (such a row
    might be one of the rows that would look absent).
#}
{% macro snapshot_deletes(entity, key) -%}
    {%- set spec = fromjson(var('mapping')).get(entity, {}) -%}
    {%- if spec.get('full_snapshot') -%}
        (not exists (select 1 from pipeline.jobs as j
            where j.ingestion_id = {{ batch_ingestion_id() }}
                and j.table_name in ({% for t in spec['tables'] %}{{ sql_literal(t['name']) }}{{ ", " if not loop.last }}{% endfor %})
                and j.extraction_mode <> 'full')
        and not exists (select 1 from {{ ref('stg_' ~ entity) }} as n where n.{{ key }} is null))
    {%- else -%}
        false
    {%- endif -%}
{%- endmacro %}


{# Dummy production's table of an entity (schema practice of the staging database). #}
{% macro dummy_production(entity) -%}
    practice.{{ entity }}
{%- endmacro %}
