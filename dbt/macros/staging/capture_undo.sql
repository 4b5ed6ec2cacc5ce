{#
    Pre-hook of each dummy-production model, in the model's own transaction: keep the rows the
    merge is about to replace (and the keys it is about to insert) in stg_<client>.undo_<entity>,
    tagged with the batch. If the batch fails after dbt (a validation gate, the promotion),
    clientflow.promotion.undo puts them back, so dummy production ends every batch equal to
    production. A merge that fails rolls this back with it.

    The client's first rows of the entity (a first load) keep one row instead: undo_key null, "the
    client had none", and the undo deletes the client's rows of the entity. A row per inserted key
    cost 3 s for a first load's 2,000,000 appointments, on the critical path of the dbt build.
#}
{% macro capture_undo(entity, key) -%}
    {%- set undo = quote_ident('stg_' ~ var('client')) ~ '.' ~ quote_ident('undo_' ~ entity) -%}
    {%- set client = sql_literal(var('client')) -%}
    create table if not exists {{ undo }} as
        select true as existed, ''::text as undo_for, ''::text as undo_key, d.*
        from {{ dummy_production(entity) }} as d with no data;
    {#- truncate, not delete: the previous batch's rows (a first load's are every row) cost nothing to drop #}
    truncate {{ undo }};
    insert into {{ undo }} (existed, undo_for, undo_key)
        select false, {{ batch_ingestion_id() }}, null
        where not exists (select 1 from {{ dummy_production(entity) }} as d where d.client_id = {{ client }});
    insert into {{ undo }}
        select d.client_id is not null, {{ batch_ingestion_id() }}, c.{{ key }}, d.*
        from {{ ref('changes_' ~ entity) }} as c
        left join {{ dummy_production(entity) }} as d on d.client_id = {{ client }} and d.{{ key }} = c.{{ key }}
        where exists (select 1 from {{ dummy_production(entity) }} as d where d.client_id = {{ client }})
{%- endmacro %}
