{#
    Quote a client-supplied identifier for PostgreSQL, doubling embedded quotes.
    adapter.quote() does not escape, so it must not be used for names from client data.
#}
{% macro quote_ident(name) -%}
    "{{ name | replace('"', '""') }}"
{%- endmacro %}
