{#
    Pre-hook of every model that writes: inside the model's transaction, pipeline.check_fence
    (include/sql/pipeline.sql) locks the client's fence row and stops if the session's fencing token
    (clientflow.fence_token: macros/batch.sql) is no longer the client's current token (a newer run
    took the client's lock over). The row stays locked until the model commits, so a stale run can
    never commit a write, and a newer run cannot start writing before this one has finished.
#}
{% macro fence_check() -%}
    select pipeline.check_fence({{ sql_literal(var('client')) }}, current_setting('clientflow.fence_token')::bigint)
{%- endmacro %}
