{#
    Cast and clean a mapped value into one of our column types.
    Text is trimmed (blank -> NULL), emails lower-cased, phones reduced to digits and a leading +,
    dates read from ISO (YYYY-MM-DD), US (MM/DD/YYYY) or compact (YYYYMMDD) text, and timestamps
    without an offset read in the client's time zone (var client_timezone).
    A value that cannot be cast fails the model: the batch stops before promotion.
#}
{% macro clean_as(entity, column, kind) -%}
    {%- set v = mapped_text(entity, column) -%}
    {%- if kind == 'text' -%}
        ({{ v }})
    {%- elif kind == 'email' -%}
        lower({{ v }})
    {%- elif kind == 'phone' -%}
        nullif(regexp_replace({{ v }}, '[^0-9+]', '', 'g'), '')
    {%- elif kind == 'date' -%}
        (case
            when {{ v }} ~ '^\d{4}-\d{2}-\d{2}$' then to_date({{ v }}, 'YYYY-MM-DD')
            when {{ v }} ~ '^\d{1,2}/\d{1,2}/\d{4}$' then to_date({{ v }}, 'MM/DD/YYYY')
            when {{ v }} ~ '^\d{8}$' then to_date({{ v }}, 'YYYYMMDD')
            when {{ v }} is not null then ({{ v }})::timestamp::date
        end)
    {%- elif kind == 'timestamptz' -%}
        (case
            when {{ v }} ~ '\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*(Z|z|[+-]\d{2}(:?\d{2})?)$'
                then ({{ v }})::timestamptz
            when {{ v }} is not null
                then ({{ v }})::timestamp at time zone {{ sql_literal(var('client_timezone')) }}
        end)
    {%- elif kind == 'integer' -%}
        ({{ v }})::integer
    {%- elif kind == 'numeric' -%}
        ({{ v }})::numeric
    {%- elif kind == 'money' -%}
        ({{ v }})::numeric(10, 2)
    {%- elif kind == 'boolean' -%}
        ({{ v }})::boolean
    {%- else -%}
        {{ exceptions.raise_compiler_error("clean_as: unknown kind " ~ kind) }}
    {%- endif -%}
{%- endmacro %}
