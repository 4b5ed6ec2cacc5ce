{#
    The combination of columns is unique in the tested rows (a composite primary key).
    Fails with the number of duplicated key combinations, never their values.
#}
{% test unique_combination(model, combination_of_columns) %}
with keys as (
    select {{ combination_of_columns | join(', ') }}, count(*) as occurrences
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1
)

select count(*) as duplicated_keys from keys having count(*) > 0
{% endtest %}
