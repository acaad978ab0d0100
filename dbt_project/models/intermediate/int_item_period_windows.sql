{{
    config(
        materialized='view',
    )
}}

-- The part of each billing period in which a subscription item was active at one price:
-- [window_start, window_end), half-open, only where that part is not empty. One definition for
-- fct_usage_by_period and reconciliation. A view, so every reader sees the catalog as it is now
-- (reconciliation runs after catalog syncs that no dbt build has followed yet).

with

subscription_items as (

    select * from {{ source('metering', 'stripe_subscription_items') }}

),

billing_periods as (

    select * from {{ source('metering', 'billing_periods') }}

),

meters as (

    select * from {{ source('metering', 'stripe_meters') }}

),

item_windows as (

    select
        subscription_items.subscription_item_id,
        subscription_items.price_id,
        subscription_items.subscription_id,
        subscription_items.stripe_customer_id,
        subscription_items.meter_event_name as meter,
        meters.meter_id,
        meters.aggregation_mode,
        billing_periods.period_start,
        billing_periods.period_end,
        greatest(billing_periods.period_start, subscription_items.valid_from) as window_start,
        least(
            billing_periods.period_end,
            coalesce(subscription_items.valid_to, billing_periods.period_end)
        ) as window_end

    from subscription_items
    inner join billing_periods
        on billing_periods.subscription_item_id = subscription_items.subscription_item_id
    left join meters
        on meters.event_name = subscription_items.meter_event_name

)

select * from item_windows
where window_start < window_end
