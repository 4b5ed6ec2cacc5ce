{#
    The staging model of one of our entities: every row of the batch from every client table that
    feeds the entity (var mapping: JSON from clientflow.mapping.resolve), cleaned and typed, with,
    per column, why its value was refused (<column>__error, NULL when fine; the codes of
    clientflow/mapping/vocabulary.py ERRORS), and which duplicate of a key is kept (occurrence 1).

    `columns` comes from the generated model file (clientflow/entities.py): our columns with
    their type, NOT NULL, accepted values and CHECK. The client's names never appear here.
    `parents` are our foreign keys ({column, entity}): a reference the batch's kept parents and
    dummy production (without the rows this batch deletes) both lack is refused as
    parent_missing. `typed` names the model that already holds the rows of `judged` (typed_<entity>,
    macro typed_model: an entity with parents types its rows while its parents are built); without
    it the staging model types the rows itself.

    CTEs: read_<n> (normalised text per table) -> typed_<n> (typed values) -> unioned -> judged
    (errors) -> checked (our CHECKs) -> referenced (parents) -> ranked (duplicates; with a typed
    table, from duplicated and duplicate_ranks) -> final.
    Each CTE ends with `offset 0`: PostgreSQL would otherwise inline it and compute a column's
    expression again wherever a later CTE names the column (three to five times per value: a 1M-row
    batch took a minute instead of twenty seconds).
#}
{% macro staging_model(entity, key, columns, parents=[], typed=none) -%}
{%- set tables = fromjson(var('mapping')).get(entity, {}).get('tables', []) -%}
{%- set fk_columns = parents | map(attribute='column') | list -%}
{%- if tables | length == 0 -%}
    {{ staging_empty(columns) }}
{%- else -%}
with
{%- if typed %}

{#- Read where needed, not copied into a temporary store first: the typed model is a table. #}
judged as not materialized (
    select * from {{ ref(typed) }}
),
{%- else %}
{{ staging_judged(entity, columns) }},
{%- endif %}
{%- for fk in parents %}

parents_{{ loop.index }} as (
    {{ valid_parents(fk, 'judged') }}
),
{%- endfor %}

referenced as (
    select
        judged.*
        {%- for fk in parents %}
        , coalesce(judged.{{ fk['column'] }}__error, case when judged.{{ fk['column'] }} is not null
            and p{{ loop.index }}.parent_key is null then 'parent_missing' end) as {{ fk['column'] }}__checked
        {%- endfor %}
    from judged
    {%- for fk in parents %}
    left join parents_{{ loop.index }} as p{{ loop.index }} on p{{ loop.index }}.parent_key = judged.{{ fk['column'] }}
    {%- endfor %}
),

{%- if typed %}

{#- Read from the typed table, the duplicates are ranked among themselves: a key found once (nearly
    every key) is occurrence 1 without a sort. Sorting every row, with all its columns, by key
    spilled 540 MB to disk for 2,000,000 appointments: the model's query took 19.9 s that way,
    14.9 s this way (EXPLAIN ANALYZE, same rows). Without a typed table `judged` is a CTE, which
    three readers would make PostgreSQL store whole first: 1,000,000 patients gained nothing
    (23.1-25.1 s against 24.3 s), so that model sorts every row as before. #}
duplicated as (
    select {{ key }} from judged
    where {{ key }} is not null
    group by {{ key }}
    having count(*) > 1
),

duplicate_ranks as (
    select
        source_table_order,
        source_file,
        source_row,
        {{ duplicate_rank(key) }} as occurrence
    from judged
    where {{ key }} in (select d.{{ key }} from duplicated as d)
),

{#- A row is named by its table, file and position in the file (raw tables: all three not null). #}
ranked as (
    select
        referenced.*,
        coalesce(r.occurrence, 1) as occurrence
    from referenced
    left join duplicate_ranks as r
        on r.source_table_order = referenced.source_table_order
        and r.source_file = referenced.source_file
        and r.source_row = referenced.source_row
),
{%- else %}

ranked as (
    select
        *,
        case when {{ key }} is null then 1 else {{ duplicate_rank(key) }} end as occurrence
    from referenced
),
{%- endif %}

final as (
    select
        {{ sql_literal(var('client')) }}::text as client_id,
        {%- for c in columns %}
        {{ c['name'] }},
        {%- endfor %}
        {%- for c in columns %}
        {{ c['name'] ~ ('__checked' if c['name'] in fk_columns else '__error') }} as {{ c['name'] }}__error,
        {%- endfor %}
        ({% for c in columns %}{{ c['name'] ~ ('__checked' if c['name'] in fk_columns else '__error') }} is not null{{ " or " if not loop.last }}{% endfor %}) as has_error,
        occurrence,
        source_table,
        source_row,
        source_file,
        job_id,
        {{ batch_ingestion_id() }}::text as ingestion_id
    from ranked
)

select * from final
{%- endif %}
{%- endmacro %}

{#
    The CTEs that read, clean and type the batch's rows of an entity, ending with `judged`: per
    row its lineage (source_table, source_table_order, source_row, source_file, job_id), what
    orders its duplicates (dedupe_*), and per column the value and why it was refused
    (<column>__error), before any reference to a parent is checked.
#}
{% macro staging_judged(entity, columns) -%}
{%- set tables = fromjson(var('mapping')).get(entity, {}).get('tables', []) -%}
{%- set first_spec = {} -%}
{%- for t in tables -%}
    {%- for name, spec in t['columns'].items() -%}
        {%- if name not in first_spec -%}{%- do first_spec.update({name: spec}) -%}{%- endif -%}
    {%- endfor -%}
{%- endfor -%}
{%- for t in tables %}
{%- set i = loop.index %}

read_{{ i }} as (
    select
        source_row,
        source_file,
        (select j.job_id from pipeline.jobs as j
            where j.ingestion_id = {{ batch_ingestion_id() }} and j.table_name = {{ sql_literal(t['name']) }}
            limit 1) as job_id,
        {{ dedupe_values(t['duplicates']) }},
        {%- for c in columns %}
        {%- set spec = t['columns'].get(c['name']) %}
        {{ column_text(spec) }} as {{ c['name'] }}__t,
        {{ column_unmapped(spec) }} as {{ c['name'] }}__unmapped{{ "," if not loop.last }}
        {%- endfor %}
    from {{ raw_table(t['name']) }}
    where ingestion_id = {{ batch_ingestion_id() }}
    offset 0
),

typed_{{ i }} as (
    select
        {{ sql_literal(t['name']) }}::text as source_table,
        {{ i }} as source_table_order,
        source_row,
        source_file,
        job_id,
        dedupe_ts,
        dedupe_num,
        dedupe_text,
        {%- for c in columns %}
        {%- set spec = t['columns'].get(c['name']) %}
        {%- if spec is none %}
        null::{{ c['sql_type'] }} as {{ c['name'] }},
        false as {{ c['name'] }}__required,
        {%- else %}
        {{ column_value(spec, c['name'] ~ '__t') }}::{{ c['sql_type'] }} as {{ c['name'] }},
        {{ spec['required'] }} as {{ c['name'] }}__required,
        {%- endif %}
        {{ c['name'] }}__t,
        {{ c['name'] }}__unmapped{{ "," if not loop.last }}
        {%- endfor %}
    from read_{{ i }}
    offset 0
),
{%- endfor %}

unioned as (
    {%- for t in tables %}
    select * from typed_{{ loop.index }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
),

judged as (
    select
        source_table,
        source_table_order,
        source_row,
        source_file,
        job_id,
        dedupe_ts,
        dedupe_num,
        dedupe_text,
        {%- for c in columns %}
        {%- set spec = first_spec.get(c['name']) %}
        {{ c['name'] }},
        case
            when {{ c['name'] }}__unmapped then 'unmapped_value'
            {%- if spec is not none and spec['sql_type'].split('(')[0] != 'text' %}
            when {{ c['name'] }}__t is not null and {{ c['name'] }} is null then {{ column_parse_error(spec, c['name'] ~ '__t') }}
            {%- endif %}
            when {{ c['name'] }} is null and {{ c['name'] }}__required then 'missing'
            {%- if c.get('accepted') %}
            when {{ c['name'] }} not in ({% for a in c['accepted'] %}{{ sql_literal(a) }}{{ ", " if not loop.last }}{% endfor %})
                then 'not_accepted'
            {%- endif %}
            {%- if c.get('check') %}
            when not coalesce({{ c['check'] }}, true) then 'check'
            {%- endif %}
        end as {{ c['name'] }}__error{{ "," if not loop.last }}
        {%- endfor %}
    from unioned
    offset 0
)
{%- endmacro %}


{#
    The typed model of an entity with parents (typed_<entity>): the rows of `judged`, kept as a
    table. Nothing in it waits for another model, so dbt's threads type the children while
    stg_patients runs; stg_<entity> then checks the references and marks the duplicates. A full
    snapshot of a client already loaded, whose merges are small, was mostly that chain (dbt build
    106 s -> 87 s for 4,000,000 rows on 2 cores); a first load, whose merges keep the cores busy
    anyway, is bound by its total work and gains nothing measurable.
#}
{% macro typed_model(entity, columns) -%}
{%- set tables = fromjson(var('mapping')).get(entity, {}).get('tables', []) -%}
{%- if tables | length == 0 -%}
    {{ typed_empty(columns) }}
{%- else -%}
with
{{ staging_judged(entity, columns) }}

select * from judged
{%- endif %}
{%- endmacro %}


{# The typed model of an entity the client does not feed: the same columns, no rows. #}
{% macro typed_empty(columns) -%}
select
    null::text as source_table,
    null::integer as source_table_order,
    null::bigint as source_row,
    null::text as source_file,
    null::text as job_id,
    null::timestamptz as dedupe_ts,
    null::numeric as dedupe_num,
    null::text as dedupe_text,
    {%- for c in columns %}
    null::{{ c['sql_type'] }} as {{ c['name'] }},
    null::text as {{ c['name'] }}__error{{ "," if not loop.last }}
    {%- endfor %}
where false
{%- endmacro %}



{#
    The keys a child row of this batch may refer to through foreign key `fk` ({column, entity}):
    the parents this batch keeps, and the parents dummy production holds (not deleted) that the
    batch does not delete (a full snapshot of the parent that no longer holds one deletes it).
    Only the keys the batch refers to are looked up, and dummy production only for those the
    batch's own parents do not answer: a full snapshot, whose children refer to its own parents,
    looks up none there (it looked up every one: 1,000,000 index probes, 7.6 s of the 34 s of
    2,000,000 appointments), and an incremental batch looks up the few thousand it needs. The
    two parts are disjoint, so they are appended without a pass to remove duplicates. Joined once
    (a hash join), rather than a lookup per child row.
#}
{% macro valid_parents(fk, children) -%}
    {#- our foreign keys name the parent's key column (clientflow.entities.ForeignKey) -#}
    {%- set parent_key = fk['column'] -%}
    {%- set stg_parent = ref('stg_' ~ fk['entity']) -%}
    {%- set deletes = snapshot_deletes(fk['entity'], parent_key) -%}
    with referenced as (
        select distinct {{ parent_key }} as parent_key from {{ children }} where {{ parent_key }} is not null
    ),
    in_batch as (
        select r.parent_key
        from referenced as r
        inner join {{ stg_parent }} as s on s.{{ parent_key }} = r.parent_key
        where s.occurrence = 1 and not s.has_error
    )
    select parent_key from in_batch
    union all
    select r.parent_key
    from referenced as r
    inner join {{ dummy_production(fk['entity']) }} as d
        on d.client_id = {{ sql_literal(var('client')) }} and d.{{ parent_key }} = r.parent_key
    where d.deleted_at is null
        and not exists (select 1 from in_batch as b where b.parent_key = r.parent_key)
        {%- if deletes != 'false' %}
        and (not {{ deletes }}
            or exists (select 1 from {{ stg_parent }} as s where s.{{ parent_key }} = d.{{ parent_key }}))
        {%- endif %}
{%- endmacro %}


{# The staging model of an entity the client does not feed: the same columns, no rows. #}
{% macro staging_empty(columns) -%}
select
    {{ sql_literal(var('client')) }}::text as client_id,
    {%- for c in columns %}
    null::{{ c['sql_type'] }} as {{ c['name'] }},
    {%- endfor %}
    {%- for c in columns %}
    null::text as {{ c['name'] }}__error,
    {%- endfor %}
    false as has_error,
    1::bigint as occurrence,
    null::text as source_table,
    null::bigint as source_row,
    null::text as source_file,
    null::text as job_id,
    {{ batch_ingestion_id() }}::text as ingestion_id
where false
{%- endmacro %}


{# A raw table of the client (schema raw_<client>), both names quoted. #}
{% macro raw_table(name) -%}
    {{ quote_ident('raw_' ~ var('client')) }}.{{ quote_ident(name) }}
{%- endmacro %}


{#
    What orders the duplicates of a key (the mapping's `duplicates`): the `by` column read as a
    timestamp, a number or text; the last row in the file wins among equals, or always with
    keep: last_in_file.
#}
{% macro dedupe_values(dup) -%}
    {%- set by = dup.get('by') -%}
    {%- set kind = dup.get('by_type') -%}
    {%- if by -%}
        {%- set raw -%}nullif(btrim({{ quote_ident(by) }}::text), ''){%- endset -%}
    {%- endif -%}
    {%- if by and kind == 'timestamp' -%}
        {{ column_value({'sql_type': 'timestamptz', 'formats': dup['formats'], 'timezone': dup['timezone']}, raw) }}
    {%- else -%}
        null::timestamptz
    {%- endif %} as dedupe_ts,
        {% if by and kind == 'number' -%}
        (case when {{ number_shape(dup, raw) }} then ({{ raw }})::numeric end)
    {%- else -%}
        null::numeric
    {%- endif %} as dedupe_num,
        {% if by and kind == 'text' -%}
        {{ raw }}
    {%- else -%}
        null::text
    {%- endif %} as dedupe_text
{%- endmacro %}


{# Which duplicate of its key a row is: 1 for the one kept (the mapping's `duplicates`: the latest
   by its column, then the last in the file). The key's rows are grouped by its bytes (collate "C":
   the same groups, as every collation of ours is deterministic), which sorts on abbreviated keys
   instead of calling the C library per comparison: stg_patients of 1,000,000 rows 14.8 and 14.2 s
   against 15.7 and 15.2 s (alternated, 2026-12-06). #}
{% macro duplicate_rank(key) -%}
    row_number() over (
            partition by {{ key }} collate "C"
            order by dedupe_ts desc nulls last, dedupe_num desc nulls last, dedupe_text desc nulls last,
                source_table_order desc, source_row desc
        )
{%- endmacro %}
