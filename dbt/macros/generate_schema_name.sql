{#
    Use a model's custom schema exactly as configured (practice, not dbt_practice): the dummy
    production schema must have production's name.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
