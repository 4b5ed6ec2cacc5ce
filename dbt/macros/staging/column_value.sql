{#
    Phase 2 of cleaning one of our columns: the normalised text `t` (a column of the previous
    CTE) read as our column's type. Never fails on a value: what cannot be read is NULL, and
    column_parse_error() says why. Formats come resolved from the mapping
    (clientflow/mapping/vocabulary.py): a regex for the shape, the parts for the calendar check.
#}
{% macro column_value(spec, t) -%}
    {%- set base = spec['sql_type'].split('(')[0] -%}
    {%- if base == 'text' -%}
        {{ t }}
    {%- elif base == 'date' -%}
        (case
        {%- for f in spec['formats'] %}
            when {{ t }} ~ {{ sql_literal(f['regex']) }} and {{ calendar_ok(f, t) }}
                then to_date({{ t }}, {{ sql_literal(f['pattern']) }})
        {%- endfor %}
        end)
    {%- elif base == 'timestamptz' -%}
        (case
        {%- for f in spec['formats'] %}
            when {{ t }} ~ {{ sql_literal(f['regex']) }}{% if f['parts'] %} and {{ calendar_ok(f, t) }}{% endif %}
                then {{ timestamp_of(f, t, spec['timezone']) }}
        {%- endfor %}
        end)
    {%- elif base == 'integer' -%}
        (case when {{ number_shape(spec, t) }}
            and ({{ t }})::numeric between -2147483648 and 2147483647 then ({{ t }})::numeric::integer end)
    {%- elif base == 'numeric' -%}
        {%- set n -%}round(({{ t }})::numeric{% if spec['multiplier'] %} * {{ spec['multiplier'] }}{% endif %}, {{ spec['scale'] }}){%- endset -%}
        (case when {{ number_shape(spec, t) }} and abs({{ n }}) < {{ spec['max_abs'] }} then {{ n }} end)
    {%- elif base == 'boolean' -%}
        (case
            when lower({{ t }}) in ({% for s in spec['boolean']['true'] %}{{ sql_literal(s) }}{{ ", " if not loop.last }}{% endfor %}) then true
            when lower({{ t }}) in ({% for s in spec['boolean']['false'] %}{{ sql_literal(s) }}{{ ", " if not loop.last }}{% endfor %}) then false
        end)
    {%- else -%}
        {{ exceptions.raise_compiler_error("column_value: no reading for our type " ~ spec['sql_type']) }}
    {%- endif -%}
{%- endmacro %}


{# Why a non-NULL text `t` gave no value `v` (the reject reasons of vocabulary.ERRORS). #}
{% macro column_parse_error(spec, t) -%}
    {%- set base = spec['sql_type'].split('(')[0] -%}
    {%- if base == 'date' -%}
        'date_format'
    {%- elif base == 'timestamptz' -%}
        'timestamp_format'
    {%- elif base == 'integer' -%}
        (case when {{ number_shape(spec, t) }} then 'out_of_range' else 'not_integer' end)
    {%- elif base == 'numeric' -%}
        (case when {{ number_shape(spec, t) }} then 'out_of_range' else 'not_number' end)
    {%- elif base == 'boolean' -%}
        'not_boolean'
    {%- else -%}
        'unreadable'
    {%- endif -%}
{%- endmacro %}


{# The format's parts name a real day (and time): pipeline.valid_ymd / valid_hms. #}
{% macro calendar_ok(f, t) -%}
    {%- set p = {} -%}
    {%- for name in ['y', 'm', 'd', 'h', 'mi', 's'] -%}
        {%- if name in f['parts'] -%}
            {%- do p.update({name: "coalesce(nullif((" ~ f['parts'][name] | replace('{v}', t) ~ ")::text, '')::integer, 0)"}) -%}
        {%- else -%}
            {%- do p.update({name: "0"}) -%}
        {%- endif -%}
    {%- endfor -%}
    pipeline.valid_ymd({{ p['y'] }}, {{ p['m'] }}, {{ p['d'] }})
    {%- if 'h' in f['parts'] %} and pipeline.valid_hms({{ p['h'] }}, {{ p['mi'] }}, {{ p['s'] }}){% endif -%}
{%- endmacro %}


{# A timestamp in one format: with an offset, read as it says; without, in the time zone `zone`. #}
{% macro timestamp_of(f, t, zone) -%}
    {%- if f['reader'] == 'epoch' -%}
        to_timestamp(({{ t }})::double precision / {{ f['epoch_divisor'] }})
    {%- elif f['reader'] == 'iso' and not f['local'] -%}
        ({{ t }})::timestamptz
    {%- elif f['reader'] == 'iso' -%}
        ({{ t }})::timestamp at time zone {{ sql_literal(zone) }}
    {%- else -%}
        {%- set p = {} -%}
        {%- for name in ['y', 'm', 'd', 'h', 'mi'] -%}
            {%- do p.update({name: "(" ~ f['parts'][name] | replace('{v}', t) ~ ")::text::integer"}) -%}
        {%- endfor -%}
        make_timestamp({{ p['y'] }}, {{ p['m'] }}, {{ p['d'] }}, {{ p['h'] }}, {{ p['mi'] }}, 0)
            at time zone {{ sql_literal(zone) }}
    {%- endif -%}
{%- endmacro %}


{# True when the text `t` is a number PostgreSQL reads safely as numeric: not longer than the
   vocabulary's MAX_NUMBER_LENGTH (checked first: a far longer number's cast fails the query), in
   the shape of the spec's regex (vocabulary.INTEGER or NUMBER). #}
{% macro number_shape(spec, t) -%}
    (length({{ t }}) <= {{ spec['max_length'] | int }} and {{ t }} ~ {{ sql_literal(spec['regex']) }})
{%- endmacro %}
