{#
    Pre-hook of the staging models: may the planner use nested loops?

    A batch is compared with the client's rows in dummy production (the parents its rows refer to,
    the rows it changes). For a small batch (an incremental one, a few thousand changed rows) the
    right plan is an index lookup per row, a nested loop: a hash join would read every row the
    client has (1-2 million) for each model. For a large batch (a full snapshot) a nested loop is
    never right, and it is catastrophic whenever the planner misjudges a size (an anti join probing
    the whole staging table once per dummy production row: hours at 1,000,000 rows), so large batches
    get hash joins, always. Dummy production's statistics are kept true by the dummy_upsert
    materialization; `nested_loop_max_rows` (var) draws the line, on the batch's rows (pipeline.jobs).

    JIT compilation stays off, as in every session of ours (clientflow.db.SESSION_SETTINGS). It was
    on for a large batch's staging models until 2026-12-06, when the same statements of the
    benchmark's 2,000,000 appointments, alternated, ran as fast or faster without it: typed 18.5 and
    18.5 s with, 18.5 and 19.3 s without; stg_patients 18.2 and 16.4 with, 17.1 and 16.3 without;
    stg_appointments 13.7 and 13.1 with, 12.4 and 12.4 without; a first load's changes_appointments
    6.5 and 6.4 with, 5.4 and 5.3 without (1.5 s of compiling, for expressions that do little).
#}
{% macro staging_planner_settings() -%}
    {%- set rows = 0 -%}
    {%- if execute -%}
        {%- set counted = run_query("select coalesce(sum(row_count), 0) from pipeline.jobs where ingestion_id = "
                                    ~ batch_ingestion_id()) -%}
        {%- set rows = counted.columns[0].values()[0] | int -%}
    {%- endif -%}
    {%- set small = rows <= var('nested_loop_max_rows') | int %}
    set local enable_nestloop = {{ 'on' if small else 'off' }}
{%- endmacro %}
