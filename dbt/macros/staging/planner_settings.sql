{#
    Pre-hook of the staging models: may the planner use nested loops, and compile with JIT?

    A batch is compared with the client's rows in dummy production (the parents its rows refer to,
    the rows it changes). For a small batch (an incremental one, a few thousand changed rows) the
    right plan is an index lookup per row, a nested loop: a hash join would read every row the
    client has (1-2 million) for each model. For a large batch (a full snapshot) a nested loop is
    never right, and it is catastrophic whenever the planner misjudges a size (an anti join probing
    the whole staging table once per dummy production row: hours at 1,000,000 rows), so large batches
    get hash joins, always. Dummy production's statistics are kept true by the dummy_upsert
    materialization; `nested_loop_max_rows` (var) draws the line, on the batch's rows (pipeline.jobs).

    JIT compilation (off in dbt's sessions: clientflow.transform.dbt_group) is back on for a large
    batch's staging models, whose expressions run millions of times (19.5 s -> 18.4 s for 1,000,000
    patients); for a small batch, compiling (1.5-2 s per model) costs more than running the model.
#}
{% macro staging_planner_settings() -%}
    {%- set rows = 0 -%}
    {%- if execute -%}
        {%- set counted = run_query("select coalesce(sum(row_count), 0) from pipeline.jobs where ingestion_id = "
                                    ~ batch_ingestion_id()) -%}
        {%- set rows = counted.columns[0].values()[0] | int -%}
    {%- endif -%}
    {%- set small = rows <= var('nested_loop_max_rows') | int %}
    set local enable_nestloop = {{ 'on' if small else 'off' }};
    set local jit = {{ 'off' if small else 'on' }}
{%- endmacro %}
