{#
    The materialization of the dummy-production models (practice.<entity>): the table exists (the
    DDL of include/sql/production.sql) and is only ever written into, never rebuilt. The model's
    SQL is the batch's change set (production's columns and `change`); in one transaction this
    inserts the new rows, updates the changed, revived and soft-deleted ones, and checks every
    foreign key of the written rows in one query per key (config `parents`) instead of one lookup
    per row: per-row foreign-key triggers are off for the transaction (session_replication_role,
    granted to the staging role for this). A broken reference fails the model, and the whole
    transaction (the undo capture of the pre-hooks included) rolls back. A batch that wrote more
    than a tenth of the table refreshes its statistics in the same transaction.
#}
{% materialization dummy_upsert, adapter='postgres' %}
    {%- set target = this.incorporate(type='table') -%}
    {%- set keys = config.require('unique_key') -%}
    {%- set parents = config.get('parents', []) -%}
    {%- set columns = adapter.get_columns_in_relation(target) | map(attribute='name') | list -%}
    {%- if columns | length == 0 -%}
        {{ exceptions.raise_compiler_error("dummy_upsert: " ~ target ~ " does not exist; bootstrap creates it") }}
    {%- endif -%}
    {%- set others = columns | reject('in', keys) | list -%}
    {%- set quoted = columns | map('string') | join(', ') -%}

    {{ run_hooks(pre_hooks, inside_transaction=False) }}
    {{ run_hooks(pre_hooks, inside_transaction=True) }}

    {% call statement('main') -%}
        set local session_replication_role = replica;
        insert into {{ target }} ({{ quoted }})
            select {{ quoted }} from ({{ sql }}) as changes where changes.change = 'insert';
        update {{ target }} as t set ({{ others | join(', ') }}) = (
            {%- for c in others %}c.{{ c }}{{ ", " if not loop.last }}{% endfor -%}
        )
            from ({{ sql }}) as c
            where c.change <> 'insert'
            {%- for k in keys %} and t.{{ k }} = c.{{ k }}{% endfor %};
        {%- for fk in parents %}
        select pipeline.require_parents(count(*), {{ sql_literal(target.identifier ~ '.' ~ fk['column']) }})
            from ({{ sql }}) as c
            where c.{{ fk['column'] }} is not null and not exists (
                select 1 from {{ dummy_production(fk['entity']) }} as p
                where p.client_id = c.client_id and p.{{ fk['column'] }} = c.{{ fk['column'] }}
            );
        {%- endfor %}
        set local session_replication_role = origin;
        {#- Statistics that still describe the table without this batch's rows would plan the next
            model's (and the next batch's) lookups for a table of no rows. Refreshed when the batch
            wrote more than a share of the table (var statistics_refresh_share, a tenth), as
            autovacuum would (which may be off, or late). #}
        select {{ target.schema }}.refresh_statistics({{ sql_literal(target.identifier) }})
            where (select count(*) from ({{ sql }}) as c)
                > {{ var('statistics_refresh_share') | float }} * greatest((select reltuples from pg_class where oid = {{ sql_literal(quote_ident(target.schema) ~ '.' ~ quote_ident(target.identifier)) }}::regclass), 0)
    {%- endcall %}

    {{ run_hooks(post_hooks, inside_transaction=True) }}
    {% do adapter.commit() %}
    {{ run_hooks(post_hooks, inside_transaction=False) }}
    {{ return({'relations': [target]}) }}
{% endmaterialization %}
