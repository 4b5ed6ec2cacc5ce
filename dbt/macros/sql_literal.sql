{# A string as a SQL literal, single quotes doubled. #}
{% macro sql_literal(value) -%}
    '{{ value | string | replace("'", "''") }}'
{%- endmacro %}
