with source as (
    select * from {{ source('client_raw', 'appointments') }}
    where ingestion_id = {{ sql_literal(var('ingestion_id')) }}
),

renamed as (
    select
        {{ sql_literal(var('client')) }}::text as client_id,
        {{ clean_as('appointments', 'appointment_id', 'text') }} as appointment_id,
        {{ clean_as('appointments', 'patient_id', 'text') }} as patient_id,
        {{ clean_as('appointments', 'provider_id', 'text') }} as provider_id,
        {{ clean_as('appointments', 'starts_at', 'timestamptz') }} as starts_at,
        {{ clean_as('appointments', 'duration_minutes', 'integer') }} as duration_minutes,
        {{ clean_as('appointments', 'status', 'text') }} as status,
        {{ clean_as('appointments', 'reason', 'text') }} as reason,
        {{ clean_as('appointments', 'fee', 'money') }} as fee,
        ingestion_id,
        source_row
    from source
),

deduped as (
    select
        *,
        row_number() over (partition by appointment_id order by source_row desc) as occurrence
    from renamed
),

final as (
    select
        client_id, appointment_id, patient_id, provider_id, starts_at, duration_minutes, status,
        reason, fee, ingestion_id
    from deduped
    where occurrence = 1
)

select * from final
