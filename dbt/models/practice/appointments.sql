{{ config(unique_key=['client_id', 'appointment_id']) }}
-- Foreign keys: appointments land after the patients and providers they reference.
-- depends_on: {{ ref('patients') }}
-- depends_on: {{ ref('providers') }}

with staged as (
    select * from {{ ref('stg_appointments') }}
),

final as (
    select
        client_id, appointment_id, patient_id, provider_id, starts_at, duration_minutes, status, reason, fee,
        ingestion_id,
        {{ batch_date() }} as source_batch_date,
        now() as synced_at
    from staged
)

select * from final
