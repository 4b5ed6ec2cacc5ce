{#
    Pre-hook of every model that writes: inside the model's transaction, lock the client's fence
    row and stop if var fence_token is no longer the client's current token (a newer run took the
    client's lock over). The row stays locked until the model commits, so a stale run can never
    commit a write, and a newer run cannot start writing before this one has finished.
#}
{% macro fence_check() -%}
    {%- set token = var('fence_token', none) -%}
    {%- if execute and (token is none or token | string == 'none') -%}
        {{ exceptions.raise_compiler_error("var fence_token is required (the client lock's fencing token)") }}
    {%- endif -%}
    do $fence$
    begin
        perform 1 from pipeline.client_fence
        where client_name = {{ sql_literal(var('client')) }} and token = {{ sql_literal(token) }}::bigint
        for update;
        if not found then
            raise exception 'clientflow: fencing token % of client % is stale: a newer run took the lock over',
                {{ sql_literal(token) }}, {{ sql_literal(var('client')) }};
        end if;
    end
    $fence$
{%- endmacro %}
