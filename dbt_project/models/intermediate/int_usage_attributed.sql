{{
    config(
        pre_hook="{{ delete_window('occurred_at') }}",
        on_schema_change='fail',
    )
}}

with

events as (

    select * from {{ ref('stg_usage_events') }}
    where {{ in_window('occurred_at') }}

),

subscription_items as (

    select * from {{ source('metering', 'stripe_subscription_items') }}

),

billing_periods as (

    select * from {{ source('metering', 'billing_periods') }}

),

-- Per event, at its own instant: an hour that straddles a plan change or a period boundary
-- splits exactly there, and an event at period_end belongs to the next period.
matched_items as (

    select
        events.*,
        subscription_items.subscription_item_id,
        subscription_items.price_id,
        subscription_items.valid_from,
        subscription_items.valid_to

    from events
    left join subscription_items
        on subscription_items.stripe_customer_id = events.stripe_customer_id
        and subscription_items.meter_event_name = events.meter
        and events.occurred_at >= subscription_items.valid_from
        and (subscription_items.valid_to is null or events.occurred_at < subscription_items.valid_to)

),

matched_periods as (

    select
        matched_items.*,
        billing_periods.period_start,
        billing_periods.period_end

    from matched_items
    left join billing_periods
        on billing_periods.subscription_item_id = matched_items.subscription_item_id
        and matched_items.occurred_at >= billing_periods.period_start
        and matched_items.occurred_at < billing_periods.period_end

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
    usage_hour,
    subscription_item_id,
    price_id,
    valid_from,
    valid_to,
    period_start,
    period_end,
    case
        when subscription_item_id is null then 'no_active_item'
        when period_start is null then 'no_billing_period'
        else 'attributed'
    end as attribution_status

from matched_periods
