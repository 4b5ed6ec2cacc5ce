{#
    The batch a build works on: its ingestion id, its date (YYYY-MM-DD) and the fencing token of
    the client's lock. They are settings of dbt's database sessions (clientflow.ingestion_id,
    clientflow.batch_date, clientflow.fence_token), which every session gets from libpq's
    PGOPTIONS (clientflow.transform.dbt_group), not dbt vars: a client's vars are then the same
    from one batch to the next, and dbt parses the project partially instead of from scratch
    (about 1.1 s of every batch). The compiled SQL reads them with current_setting(), which is
    stable within a statement: an index condition can use it, and the planner estimates with the
    value itself.
#}
{% macro batch_ingestion_id() -%}
    current_setting('clientflow.ingestion_id')
{%- endmacro %}

{# The batch's date. Promotion compares it with the date already in production, so that a late,
   older batch never overwrites newer rows. #}
{% macro batch_date() -%}
    current_setting('clientflow.batch_date')::date
{%- endmacro %}

{#
    on-run-start: refuse to build without the batch's settings rather than fail in the first
    model's SQL (or guess).
#}
{% macro require_batch() -%}
    {%- if execute -%}
        {%- set names = ['clientflow.ingestion_id', 'clientflow.batch_date', 'clientflow.fence_token'] -%}
        {%- set reads = [] -%}
        {%- for name in names -%}
            {%- do reads.append("current_setting(" ~ sql_literal(name) ~ ", true)") -%}
        {%- endfor -%}
        {%- set found = run_query("select " ~ reads | join(", ")) -%}
        {%- set missing = [] -%}
        {%- for name in names -%}
            {%- if found.rows[0][loop.index0] in (none, '') -%}
                {%- do missing.append(name) -%}
            {%- endif -%}
        {%- endfor -%}
        {%- if missing -%}
            {{ exceptions.raise_compiler_error("the batch's session settings " ~ missing | join(', ')
                ~ " are missing: dbt builds a batch with them in PGOPTIONS (clientflow.transform.dbt_group)") }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
