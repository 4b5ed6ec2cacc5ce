{#
    Schemas: the dummy production models go to `practice` exactly (production's name, not
    dbt_practice); the staging models to the client's own `stg_<client>` (custom schema
    client_staging), so two clients' batches never share a table.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'client_staging' -%}
        stg_{{ var('client') }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
