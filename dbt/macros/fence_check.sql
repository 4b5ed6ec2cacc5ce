{#
    Pre-hook of every model that writes: inside the model's transaction, pipeline.check_fence
    (include/sql/pipeline.sql) locks the client's fence row and stops if var fence_token is no
    longer the client's current token (a newer run took the client's lock over). The row stays
    locked until the model commits, so a stale run can never commit a write, and a newer run cannot
    start writing before this one has finished.
#}
{% macro fence_check() -%}
    {%- set token = var('fence_token', none) -%}
    {%- if execute and (token is none or token | string == 'none') -%}
        {{ exceptions.raise_compiler_error("var fence_token is required (the client lock's fencing token)") }}
    {%- endif -%}
    select pipeline.check_fence({{ sql_literal(var('client')) }}, {{ sql_literal(token) }}::bigint)
{%- endmacro %}
