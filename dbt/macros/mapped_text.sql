{#
    The client's value for one of our columns, as trimmed text, from the mapping in var('entities'):
    the quoted source column, its value map (matched on lower(trim(value))), and its default for
    NULL or blank values. An unmapped column is NULL.
#}
{% macro mapped_text(entity, column) -%}
    {%- set spec = var('entities').get(entity, {}).get('columns', {}).get(column) -%}
    {%- if spec is none -%}
        null::text
    {%- else -%}
        {%- set raw -%}nullif(trim({{ quote_ident(spec['source']) }}::text), ''){%- endset -%}
        {%- set value -%}
            {%- if spec.get('values') -%}
                case lower({{ raw }})
                {%- for client_value, ours in spec['values'].items() %}
                    when {{ sql_literal(client_value | lower) }} then {{ sql_literal(ours) }}
                {%- endfor %}
                end
            {%- else -%}
                {{ raw }}
            {%- endif -%}
        {%- endset -%}
        {%- if spec.get('default') is not none -%}
            case when {{ raw }} is null then {{ sql_literal(spec['default']) }} else {{ value }} end
        {%- else -%}
            {{ value }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
