{{
    config(
        pre_hook="{{ delete_window('period_start', 'period_end') }}",
        on_schema_change='fail',
    )
}}

-- Rebuilds every (item interval, billing period) whose period overlaps the run's window, from
-- all of that period's hours: a period total is only right when it is computed whole.

with

-- Every active item window (used or not) of the periods that overlap the run's window.
active_windows as (

    select * from {{ ref('int_item_period_windows') }}
    where {{ in_window('period_start', 'period_end') }}

),

hourly as (

    select * from {{ ref('fct_usage_hourly') }}

),

attributed as (

    select * from {{ ref('int_usage_attributed') }}

),

period_totals as (

    select
        active_windows.subscription_item_id,
        active_windows.price_id,
        active_windows.period_start,
        sum(hourly.quantity) as quantity,
        sum(hourly.event_count) as event_count,
        sum(hourly.net_event_count) as net_event_count,
        max(hourly.max_quantity) as max_quantity,
        max(hourly.last_occurred_at) as last_occurred_at

    from active_windows
    inner join hourly
        on hourly.subscription_item_id = active_windows.subscription_item_id
        and hourly.price_id = active_windows.price_id
        and hourly.period_start = active_windows.period_start
    group by
        active_windows.subscription_item_id,
        active_windows.price_id,
        active_windows.period_start

),

last_in_window as (

    select
        hourly.subscription_item_id,
        hourly.price_id,
        hourly.period_start,
        hourly.last_quantity

    from hourly
    inner join period_totals
        on period_totals.subscription_item_id = hourly.subscription_item_id
        and period_totals.price_id = hourly.price_id
        and period_totals.period_start = hourly.period_start
        and period_totals.last_occurred_at = hourly.last_occurred_at

),

-- last_ever: the customer's latest reading on this meter before the window ends, carried
-- forward into periods without readings and across plan changes.
readings_before_end as (

    select
        active_windows.subscription_item_id,
        active_windows.price_id,
        active_windows.period_start,
        attributed.quantity,
        row_number() over (
            partition by
                active_windows.subscription_item_id,
                active_windows.price_id,
                active_windows.period_start
            order by attributed.occurred_at desc, attributed.received_at desc, attributed.event_id desc
        ) as recency

    from active_windows
    inner join attributed
        on attributed.stripe_customer_id = active_windows.stripe_customer_id
        and attributed.meter = active_windows.meter
        and attributed.occurred_at < active_windows.window_end
    where active_windows.aggregation_mode = 'last_ever'

),

last_ever as (

    select * from readings_before_end
    where recency = 1

)

select
    active_windows.subscription_item_id,
    active_windows.price_id,
    active_windows.stripe_customer_id,
    active_windows.meter,
    active_windows.aggregation_mode,
    active_windows.period_start,
    active_windows.period_end,
    active_windows.window_start,
    active_windows.window_end,
    coalesce(
        case active_windows.aggregation_mode
            when 'sum' then period_totals.quantity
            when 'count' then period_totals.net_event_count
            when 'max' then period_totals.max_quantity
            when 'last_during_period' then last_in_window.last_quantity
            when 'last_ever' then last_ever.quantity
        end,
        0
    ) as quantity,
    coalesce(period_totals.event_count, 0) as event_count

from active_windows
left join period_totals
    on period_totals.subscription_item_id = active_windows.subscription_item_id
    and period_totals.price_id = active_windows.price_id
    and period_totals.period_start = active_windows.period_start
left join last_in_window
    on last_in_window.subscription_item_id = active_windows.subscription_item_id
    and last_in_window.price_id = active_windows.price_id
    and last_in_window.period_start = active_windows.period_start
left join last_ever
    on last_ever.subscription_item_id = active_windows.subscription_item_id
    and last_ever.price_id = active_windows.price_id
    and last_ever.period_start = active_windows.period_start
