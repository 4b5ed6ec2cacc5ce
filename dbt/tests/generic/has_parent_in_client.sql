{#
    Every non-null column_name has a row in `to` with the same client_id and `field`
    (a composite foreign key that dbt's relationships test cannot express).
#}
{% test has_parent_in_client(model, column_name, to, field) %}
with child as (
    select client_id, {{ column_name }} as parent_key from {{ model }}
),

parent as (
    select client_id, {{ field }} as parent_key from {{ to }}
)

select count(*) as orphans
from child
where child.parent_key is not null
    and not exists (
        select 1 from parent
        where parent.client_id = child.client_id and parent.parent_key = child.parent_key
    )
having count(*) > 0
{% endtest %}
