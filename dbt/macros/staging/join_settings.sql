{#
    Pre-hook of every staging model: how the batch may be joined with dummy production.

    A full snapshot is compared with all of the client's dummy production rows: hash joins,
    always. A nested loop is never right at these sizes, but the planner picks one whenever dummy
    production's statistics are stale (an anti join probing the whole staging table once per dummy
    production row: hours at 1,000,000 rows), e.g. right after a first large batch that autovacuum
    has not analyzed yet. So nested loops are off.

    A batch whose every file is incremental holds a few changed rows. Looking each of them up by
    its key in dummy production's primary key index (a nested loop) is what makes it cheap, so
    nested loops stay on. Its staging tables are analyzed as they are built (post-hook), and the
    snapshot comparison (the anti join) does not run for it (snapshot_deletes is false).
#}
{% macro staging_join_settings() -%}
    {%- set incremental = false -%}
    {%- if execute -%}
        {%- set found = run_query(
            "select coalesce(bool_and(extraction_mode = 'incremental'), false) from pipeline.jobs where ingestion_id = "
            ~ sql_literal(var('ingestion_id'))) -%}
        {%- set incremental = found.columns[0].values()[0] -%}
    {%- endif -%}
    {%- if incremental -%}
        set local enable_nestloop = on
    {%- else -%}
        set local enable_nestloop = off
    {%- endif -%}
{%- endmacro %}
