{{
    config(
        pre_hook="{{ delete_window('occurred_at') }}",
        on_schema_change='fail',
    )
}}

with

accepted as (

    select * from {{ source('metering', 'accepted_usage_events') }}
    where {{ in_window('occurred_at') }}

),

typed as (

    select
        {{ dbt.safe_cast('event_id', dbt.type_string()) }} as event_id,
        {{ dbt.safe_cast('customer_id', dbt.type_string()) }} as customer_id,
        {{ dbt.safe_cast('stripe_customer_id', dbt.type_string()) }} as stripe_customer_id,
        {{ dbt.safe_cast('meter', dbt.type_string()) }} as meter,
        {{ dbt.safe_cast('quantity', type_quantity()) }} as quantity,
        occurred_at,
        received_at,
        {{ dbt.safe_cast('reason', dbt.type_string()) }} as reason,
        row_number() over (
            partition by event_id
            order by received_at, partition_hour, quantity
        ) as received_rank

    from accepted

)

select
    event_id,
    customer_id,
    stripe_customer_id,
    meter,
    quantity,
    occurred_at,
    received_at,
    reason,
    {{ dbt.date_trunc('hour', 'occurred_at') }} as usage_hour

from typed
where received_rank = 1
