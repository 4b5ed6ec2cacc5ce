{{ config(unique_key=['client_id', 'provider_id']) }}

with staged as (
    select * from {{ ref('stg_providers') }}
),

final as (
    select
        client_id, provider_id, first_name, last_name, specialty, npi, email, active,
        ingestion_id,
        {{ batch_date() }} as source_batch_date,
        now() as synced_at
    from staged
)

select * from final
