with source as (
    select * from {{ source('client_raw', 'providers') }}
    where ingestion_id = {{ sql_literal(var('ingestion_id')) }}
),

renamed as (
    select
        {{ sql_literal(var('client')) }}::text as client_id,
        {{ clean_as('providers', 'provider_id', 'text') }} as provider_id,
        {{ clean_as('providers', 'first_name', 'text') }} as first_name,
        {{ clean_as('providers', 'last_name', 'text') }} as last_name,
        {{ clean_as('providers', 'specialty', 'text') }} as specialty,
        {{ clean_as('providers', 'npi', 'text') }} as npi,
        {{ clean_as('providers', 'email', 'email') }} as email,
        {{ clean_as('providers', 'active', 'boolean') }} as active,
        ingestion_id,
        source_row
    from source
),

deduped as (
    select
        *,
        row_number() over (partition by provider_id order by source_row desc) as occurrence
    from renamed
),

final as (
    select client_id, provider_id, first_name, last_name, specialty, npi, email, active, ingestion_id
    from deduped
    where occurrence = 1
)

select * from final
