{#
    Phase 1 of cleaning one of our columns: the client's value as normalised text.

    `spec` is the column's resolved rules (clientflow.mapping.resolve.resolved_column): the source
    column(s), trim, empty_as_null, values (already lower-cased keys), default, case, email, phone.
    Several sources are joined with '-' (NULL if any is NULL). Returns a SQL text expression; an
    unmapped column (spec none) is NULL.
#}
{% macro column_text(spec) -%}
    {%- if spec is none -%}
        null::text
    {%- else -%}
        {%- set raw = column_source_text(spec) -%}
        {%- set x = raw -%}
        {%- if spec['values'] -%}
            {%- set x -%}
                case lower({{ x }})
                {%- for client_value, ours in spec['values'].items() %}
                    when {{ sql_literal(client_value) }} then {{ sql_literal(ours) }}
                {%- endfor %}
                end
            {%- endset -%}
        {%- endif -%}
        {%- if spec['default'] is not none -%}
            {#- only a missing value gets the default: an unmapped one stays unmapped -#}
            {%- set x -%}(case when {{ raw }} is null then {{ sql_literal(spec['default']) }} else {{ x }} end){%- endset -%}
        {%- endif -%}
        {%- if spec['case'] == 'lower' or spec['email'] -%}
            {%- set x -%}lower({{ x }}){%- endset -%}
        {%- elif spec['case'] == 'upper' -%}
            {%- set x -%}upper({{ x }}){%- endset -%}
        {%- elif spec['case'] == 'title' -%}
            {%- set x -%}initcap({{ x }}){%- endset -%}
        {%- endif -%}
        {%- if spec['phone'] is not none -%}
            {%- set x = phone_text(x, spec['phone']) -%}
        {%- endif -%}
        {{ x }}
    {%- endif -%}
{%- endmacro %}


{# The source column(s) as text: trimmed and empty-as-null per the rules; before any mapping. #}
{% macro column_source_text(spec) -%}
    {%- set parts = [] -%}
    {%- for source in spec['sources'] -%}
        {%- set x = quote_ident(source) ~ '::text' -%}
        {%- if spec['trim'] -%}{%- set x = "btrim(" ~ x ~ ", E' \\t\\r\\n')" -%}{%- endif -%}
        {%- if spec['empty_as_null'] -%}{%- set x = "nullif(" ~ x ~ ", '')" -%}{%- endif -%}
        {%- do parts.append(x) -%}
    {%- endfor -%}
    {%- if parts | length == 0 -%}
        null::text
    {%- elif parts | length == 1 -%}
        {{ parts[0] }}
    {%- else -%}
        (case when {{ parts | join(' is null or ') }} is null then null else {{ parts | join(" || '-' || ") }} end)
    {%- endif -%}
{%- endmacro %}


{#
    True when the client gave a value that the column's `values` map does not list (the row is
    rejected as unmapped_value); false otherwise, and always false without a map.
#}
{% macro column_unmapped(spec) -%}
    {%- if spec is none or not spec['values'] -%}
        false
    {%- else -%}
        {%- set raw = column_source_text(spec) -%}
        coalesce(lower({{ raw }}) not in (
            {%- for client_value in spec['values'] -%}
                {{ sql_literal(client_value) }}{{ ", " if not loop.last }}
            {%- endfor -%}
        ), false)
    {%- endif -%}
{%- endmacro %}


{#
    A phone number: the digits, with a leading + kept; with a country code, a number of exactly
    national_digits digits gets +<code>, and one that already starts with the code gets a +.
#}
{% macro phone_text(x, rule) -%}
    {%- set digits = "regexp_replace(" ~ x ~ ", '[^0-9]', '', 'g')" -%}
    {%- if rule.get('country_code') -%}
        {%- set code = rule['country_code'] -%}
        {%- set national = rule.get('national_digits', 10) -%}
        (case
            when {{ x }} ~ '^\s*\+' then '+' || {{ digits }}
            when length({{ digits }}) = {{ national }} then '+{{ code }}' || {{ digits }}
            when length({{ digits }}) = {{ national + code | length }} and {{ digits }} like '{{ code }}%'
                then '+' || {{ digits }}
            else nullif({{ digits }}, '')
        end)
    {%- else -%}
        nullif(regexp_replace({{ x }}, '[^0-9+]', '', 'g'), '')
    {%- endif -%}
{%- endmacro %}
