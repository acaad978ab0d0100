"""Following Stripe's ``/v1/events`` by cursor: what a subscription change or a new invoice
means for the pipeline, turned into runs.

- a subscription created, updated or deleted: sync the catalog (new intervals, new billing-period
  partitions); when a metered item's price was replaced or the item removed, also push that
  customer now, so the push compares the old item's usage with what Stripe billed for it;
- an invoice created for an ended period (its finalization grace window has begun): push the
  customer now, then, once those pushes have finished, reconcile the ended period while the
  invoice is still a draft.

The cursor holds the last event id and the periods waiting for their pushes, so a tick never
re-reads old events and a reconciliation never runs before the usage it checks was sent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from metering_pipeline.billing.catalog import StripeEvent
from metering_pipeline.defs.automation.jobs import (
    PERIOD_TAG,
    TRIGGER_TAG,
    customer_final_push,
    period_reconciliation,
    stripe_catalog_sync,
)
from metering_pipeline.defs.partitions import billing_periods, period_key
from metering_pipeline.defs.resources import StripeResource

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
)
INVOICE_EVENTS = ("invoice.created",)
RUN_KEY_TAG = "dagster/run_key"
_FINISHED = (
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
)


@dataclass
class EventsCursor:
    """``after``: the last event handled; ``waiting``: per period key, the run keys of the final
    pushes that must finish before its reconciliation, and the invoice event that started it."""

    after: str | None = None
    waiting: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str | None) -> EventsCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(after=data.get("after"), waiting=data.get("waiting", {}))

    def dump(self) -> str:
        return json.dumps({"after": self.after, "waiting": self.waiting}, sort_keys=True)


def replaced_metered_items(event: StripeEvent) -> list[str]:
    """Items (``si_...``) whose metered price left the subscription in this update: the price
    changed on the item, or the item was removed."""
    previous = (event.previous_attributes or {}).get("items")
    if not previous:
        return []
    current = {
        (item["id"], _price_id(item)) for item in event.data_object.get("items", {}).get("data", [])
    }
    return sorted(
        item["id"]
        for item in previous.get("data", [])
        if _metered(item) and (item["id"], _price_id(item)) not in current
    )


def _price_id(item: Mapping[str, Any]) -> str:
    price = item.get("price")
    return price if isinstance(price, str) else price["id"]


def _metered(item: Mapping[str, Any]) -> bool:
    price = item.get("price")
    recurring = price.get("recurring") if isinstance(price, Mapping) else None
    return bool(recurring and (recurring.get("meter") or recurring.get("usage_type") == "metered"))


def ended_period(event: StripeEvent) -> str | None:
    """The billing period a subscription invoice bills in arrears, as a partition key."""
    invoice = event.data_object
    subscription = ((invoice.get("parent") or {}).get("subscription_details") or {}).get(
        "subscription"
    )
    start, end = invoice.get("period_start"), invoice.get("period_end")
    if not subscription or not start or not end or end <= start:
        return None
    return period_key(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))


def _finished(instance: dg.DagsterInstance, run_key: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(runs) and runs[0].status in _FINISHED


def _push_request(customer: str, event: StripeEvent) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"final_push:{customer}:{event.id}",
        job_name=customer_final_push.name,
        run_config={"ops": {"push_customer": {"config": {"customer": customer}}}},
        tags={TRIGGER_TAG: event.type, "metering/customer": customer},
    )


@dg.sensor(
    jobs=[stripe_catalog_sync, customer_final_push, period_reconciliation],
    minimum_interval_seconds=60,
    description="Follows Stripe's events: catalog sync on subscription changes, a final push per "
    "affected customer, reconciliation of ended periods in the finalization grace window.",
)
def stripe_events(context: dg.SensorEvaluationContext, stripe: StripeResource) -> dg.SensorResult:
    cursor = EventsCursor.parse(context.cursor)
    events = stripe.gateway().list_events(cursor.after, [*SUBSCRIPTION_EVENTS, *INVOICE_EVENTS])
    requests: list[dg.RunRequest] = []
    pushes: dict[str, dg.RunRequest] = {}
    ended: dict[str, tuple[str, set[str]]] = {}  # period key -> (invoice event, customers)
    last_subscription_event = None
    for event in events:
        customer = event.data_object.get("customer")
        if event.type in SUBSCRIPTION_EVENTS:
            last_subscription_event = event
            replaced = replaced_metered_items(event)
            if customer and (replaced or event.type == "customer.subscription.deleted"):
                context.log.info(
                    f"{event.id}: metered items {', '.join(replaced) or 'all'} of customer "
                    f"{customer} left their price; pushing that customer now"
                )
                pushes[customer] = _push_request(customer, event)
            continue
        key = ended_period(event)
        if key is None or not customer:
            continue
        pushes[customer] = _push_request(customer, event)
        ended[key] = (event.id, ended.get(key, ("", set()))[1] | {customer})
        context.log.info(
            f"{event.id}: invoice for period {key} of customer {customer} created; final push, "
            "then reconciliation inside the finalization grace window"
        )
    # one push per customer per tick: the reconciliation waits for that run, whichever
    # event asked for it last
    for key, (event_id, customers) in ended.items():
        waiting = cursor.waiting.setdefault(key, {"pushes": []})
        waiting["event"] = event_id
        waiting["pushes"] = sorted({*waiting["pushes"], *(pushes[c].run_key for c in customers)})
    if last_subscription_event is not None:
        requests.append(
            dg.RunRequest(
                run_key=f"catalog_sync:{last_subscription_event.id}",
                job_name=stripe_catalog_sync.name,
                tags={TRIGGER_TAG: last_subscription_event.type},
            )
        )
    requests += pushes.values()
    launched = {request.run_key for request in requests}
    for key, waiting in sorted(cursor.waiting.items()):
        pushes_done = all(
            run not in launched and _finished(context.instance, run) for run in waiting["pushes"]
        )
        if not pushes_done:
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"reconcile:{key}:{waiting['event']}",
                job_name=period_reconciliation.name,
                partition_key=key,
                tags={TRIGGER_TAG: "invoice.created", PERIOD_TAG: key},
            )
        )
        del cursor.waiting[key]
    if events:
        cursor.after = events[-1].id
    known = set(context.instance.get_dynamic_partitions(billing_periods.name))
    missing = sorted(key for key in ended if key not in known)
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor.dump(),
        dynamic_partitions_requests=[billing_periods.build_add_request(missing)] if missing else [],
        skip_reason=None if requests else f"{len(events)} new Stripe events, nothing to run",
    )
