{#
    No kept row of the batch has a refused value: fails with one row per (column, reason) and
    the number of rows, never a value. (The reasons: clientflow/mapping/vocabulary.py ERRORS.)
#}
{% test no_rejected_values(model, columns) %}
with refused as (
    {%- for c in columns %}
    select {{ sql_literal(c) }} as column_name, {{ c }}__error as reason from {{ model }}
    where occurrence = 1 and {{ c }}__error is not null
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
)

select column_name, reason, count(*) as refused_rows
from refused
group by column_name, reason
{% endtest %}
