{#
    The batch's date (var batch_date, YYYY-MM-DD) as a SQL date. Promotion compares it with the
    date already in production so that a late, older batch never overwrites newer rows.
    Refuses to run without it rather than guessing.
#}
{% macro batch_date() -%}
    {%- set value = var('batch_date', none) -%}
    {%- if execute and (value is none or value | string == 'none') -%}
        {{ exceptions.raise_compiler_error("var batch_date is required (the batch's date, YYYY-MM-DD)") }}
    {%- endif -%}
    {{ sql_literal(value) }}::date
{%- endmacro %}
