{{ config(unique_key=['client_id', 'patient_id']) }}

with staged as (
    select * from {{ ref('stg_patients') }}
),

final as (
    select
        client_id, patient_id, first_name, last_name, date_of_birth, sex, email, phone, postal_code, created_at,
        ingestion_id,
        {{ batch_date() }} as source_batch_date,
        now() as synced_at
    from staged
)

select * from final
