with source as (
    select * from {{ source('client_raw', 'patients') }}
    where ingestion_id = {{ sql_literal(var('ingestion_id')) }}
),

renamed as (
    select
        {{ sql_literal(var('client')) }}::text as client_id,
        {{ clean_as('patients', 'patient_id', 'text') }} as patient_id,
        {{ clean_as('patients', 'first_name', 'text') }} as first_name,
        {{ clean_as('patients', 'last_name', 'text') }} as last_name,
        {{ clean_as('patients', 'date_of_birth', 'date') }} as date_of_birth,
        {{ clean_as('patients', 'sex', 'text') }} as sex,
        {{ clean_as('patients', 'email', 'email') }} as email,
        {{ clean_as('patients', 'phone', 'phone') }} as phone,
        {{ clean_as('patients', 'postal_code', 'text') }} as postal_code,
        {{ clean_as('patients', 'created_at', 'timestamptz') }} as created_at,
        ingestion_id,
        source_row
    from source
),

deduped as (
    select
        *,
        row_number() over (partition by patient_id order by source_row desc) as occurrence
    from renamed
),

final as (
    select
        client_id, patient_id, first_name, last_name, date_of_birth, sex, email, phone,
        postal_code, created_at, ingestion_id
    from deduped
    where occurrence = 1
)

select * from final
