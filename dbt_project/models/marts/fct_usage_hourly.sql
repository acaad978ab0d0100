{{
    config(
        pre_hook="{{ delete_window('usage_hour') }}",
        on_schema_change='fail',
    )
}}

with

attributed as (

    select * from {{ ref('int_usage_attributed') }}
    where attribution_status = 'attributed'
        and {{ in_window('usage_hour') }}

),

ranked as (

    select
        attributed.*,
        row_number() over (
            partition by subscription_item_id, price_id, period_start, usage_hour
            order by occurred_at desc, received_at desc, event_id desc
        ) as recency

    from attributed

)

select
    subscription_item_id,
    price_id,
    stripe_customer_id,
    meter,
    period_start,
    period_end,
    usage_hour,
    sum(quantity) as quantity,
    count(*) as event_count,
    -- count meters: a correction (negative quantity) takes back one counted event
    sum(case when quantity < 0 then -1 else 1 end) as net_event_count,
    max(case when recency = 1 then quantity end) as last_quantity,
    max(occurred_at) as last_occurred_at,
    max(quantity) as max_quantity

from ranked
group by
    subscription_item_id,
    price_id,
    stripe_customer_id,
    meter,
    period_start,
    period_end,
    usage_hour
