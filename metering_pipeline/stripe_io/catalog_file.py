"""``metering stripe apply``: read what the account holds under the catalog file's keys, and make
the planned changes, in dependency order (meters and products, prices, customers, subscriptions).

The same calls run against the sandbox and a real account. Every create carries an idempotency
key derived from the object's file key, so an apply interrupted and run again within Stripe's
idempotency window cannot create a second copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import stripe

from metering_pipeline.billing.identifiers import idempotency_key
from metering_pipeline.stripe_io import convert
from metering_pipeline.stripe_io.provision import Provisioner, tier_params
from metering_pipeline.stripe_setup.plan import (
    CatalogPlan,
    Change,
    Existing,
    ExistingCustomer,
    ExistingProduct,
    ExistingSubscription,
)
from metering_pipeline.stripe_setup.spec import (
    CatalogSpec,
    CustomerSpec,
    MeterSpec,
    PriceSpec,
    ProductSpec,
    SubscriptionSpec,
)

PRODUCT_KEY = "metering_key"
CLOCK_PREFIX = "metering "  # test clocks the apply creates, so `stripe clocks` finds them
_PAGE = {"limit": 100}


class CatalogApplyError(RuntimeError):
    """Stripe could not be reached or refused a call; the message says which and what to do."""


@contextmanager
def stripe_errors(where: str | None) -> Iterator[None]:
    """SDK errors as one readable line (the key never appears in Stripe's messages)."""
    try:
        yield
    except stripe.APIConnectionError:
        raise CatalogApplyError(
            f"cannot reach Stripe at {where or 'api.stripe.com'}; without STRIPE_API_KEY start "
            "the sandbox first (`metering sandbox` or `metering dev`)"
        ) from None
    except stripe.StripeError as error:
        raise CatalogApplyError(f"Stripe refused a call: {error.user_message or error}") from None


class CatalogApplier(Provisioner):
    """Reads and writes the catalog file's objects with one paced SDK client."""

    def __init__(self, *args, customer_metadata_key: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._customer_key = customer_metadata_key

    def existing(self, spec: CatalogSpec) -> Existing:
        meters = {
            meter.event_name: meter
            for meter in map(convert.meter, self._listed(self._api.billing.meters.list(_PAGE)))
        }
        products = {
            obj["metadata"][PRODUCT_KEY]: ExistingProduct(obj["id"], obj["name"])
            for obj in self._listed(self._api.products.list(_PAGE))
            if PRODUCT_KEY in (obj.get("metadata") or {})
        }
        lookup_keys = [price.lookup_key for price in spec.prices]
        prices = {}
        for start in range(0, len(lookup_keys), 10):  # Stripe takes 10 lookup keys a call
            listed = self._api.prices.list(  # a price's tiers come only when expanded
                {"lookup_keys": lookup_keys[start : start + 10], "expand": ["data.tiers"]}
            )
            prices |= {obj["lookup_key"]: convert.price(obj) for obj in self._listed(listed)}
        customers = {}
        for obj in self._listed(self._api.customers.list(_PAGE)):
            app_id = (obj.get("metadata") or {}).get(self._customer_key)
            if app_id:
                customers[app_id] = ExistingCustomer(
                    obj["id"], obj.get("name"), obj.get("email"), obj.get("test_clock")
                )
        subscriptions = {}
        for app_id, customer in customers.items():
            listed = self._api.subscriptions.list({"customer": customer.id, "limit": 100})
            for obj in self._listed(listed):
                if obj["status"] not in ("canceled", "incomplete_expired"):
                    items = {item["price"]["id"]: item["id"] for item in obj["items"]["data"]}
                    subscriptions[app_id] = ExistingSubscription(obj["id"], items)
        return Existing(meters, products, prices, customers, subscriptions)

    @staticmethod
    def _listed(page) -> Iterator[dict]:
        """Every object of a list call, as plain dicts, following pagination."""
        return (obj.to_dict() for obj in page.auto_paging_iter())

    def apply(
        self, plan: CatalogPlan, existing: Existing, say: Callable[[str], None] = print
    ) -> None:
        """Make the plan's changes; ``existing`` gains each created object's id as it goes."""
        if plan.conflicts:
            raise ValueError("a plan with conflicts is not applied")
        ids = _Ids(existing)
        order = ("meter", "product", "price", "customer", "subscription")
        for kind in order:
            for change in (c for c in plan.changes if c.kind == kind):
                getattr(self, f"_{kind}")(change, ids)
                say(f"  done: {change.line()}")

    def _meter(self, change: Change, ids: _Ids) -> None:
        spec = change.spec
        assert isinstance(spec, MeterSpec)
        if change.action == "create":
            params = {
                "display_name": spec.display_name,
                "event_name": spec.event_name,
                "default_aggregation": {"formula": spec.formula},
            }
            obj = self._api.billing.meters.create(params, _key("meter", spec.event_name, params))
            ids.meters[spec.event_name] = obj.id
            return
        assert change.existing_id is not None
        if "reactivate" in change.details:
            self._api.billing.meters.reactivate(change.existing_id)
        self._api.billing.meters.update(change.existing_id, {"display_name": spec.display_name})

    def _product(self, change: Change, ids: _Ids) -> None:
        spec = change.spec
        assert isinstance(spec, ProductSpec)
        if change.action == "create":
            params = {"name": spec.name, "metadata": {PRODUCT_KEY: spec.key}}
            obj = self._api.products.create(params, _key("product", spec.key, params))
            ids.products[spec.key] = obj.id
            return
        assert change.existing_id is not None
        self._api.products.update(change.existing_id, {"name": spec.name})

    def _price(self, change: Change, ids: _Ids) -> None:
        spec = change.spec
        assert isinstance(spec, PriceSpec)
        params: dict = {
            "currency": spec.currency,
            "product": ids.products[spec.product],
            "lookup_key": spec.lookup_key,
            "recurring": {
                "interval": spec.interval,
                "interval_count": spec.interval_count,
                "usage_type": "metered",
                "meter": ids.meters[spec.meter],
            },
        }
        if spec.unit_amount_decimal is not None:
            params |= {
                "billing_scheme": "per_unit",
                "unit_amount_decimal": str(spec.unit_amount_decimal),
            }
        else:
            params |= {
                "billing_scheme": "tiered",
                "tiers_mode": spec.tiers_mode,
                "tiers": [tier_params(tier) for tier in spec.tiers],
            }
        obj = self._api.prices.create(params, _key("price", spec.lookup_key, params))
        ids.prices[spec.lookup_key] = obj.id

    def _customer(self, change: Change, ids: _Ids) -> None:
        spec = change.spec
        assert isinstance(spec, CustomerSpec)
        fields = {"name": spec.name, **({"email": spec.email} if spec.email else {})}
        if change.action == "update":
            assert change.existing_id is not None
            self._api.customers.update(change.existing_id, fields)
            return
        if spec.test_clock is not None:
            clock_params = {
                "frozen_time": int(spec.test_clock.astimezone(UTC).timestamp()),
                "name": f"{CLOCK_PREFIX}{spec.id}",
            }
            clock = self._api.test_helpers.test_clocks.create(
                clock_params, _key("clock", spec.id, clock_params)
            )
            fields["test_clock"] = clock.id
        params = {**fields, "metadata": {self._customer_key: spec.id}}
        obj = self._api.customers.create(params, _key("customer", spec.id, params))
        ids.customers[spec.id] = obj.id

    def _subscription(self, change: Change, ids: _Ids) -> None:
        spec = change.spec
        assert isinstance(spec, SubscriptionSpec)
        if change.action == "create":
            params = {
                "customer": ids.customers[spec.customer],
                "items": [{"price": ids.prices[key]} for key in spec.prices],
            }
            self._api.subscriptions.create(params, _key("subscription", spec.customer, params))
            return
        assert change.existing_id is not None
        found = ids.existing.subscriptions[spec.customer]
        wanted = {ids.prices[key] for key in spec.prices}
        items = [
            {"id": item, "deleted": True}
            for price, item in found.items.items()
            if price not in wanted
        ]
        items += [{"price": price} for price in sorted(wanted - set(found.items))]
        self._api.subscriptions.update(change.existing_id, {"items": items})

    def advance_clocks(self, moment: datetime, say: Callable[[str], None] = print) -> int:
        """Move every test clock the apply created that is behind ``moment`` to it."""
        target = int(moment.astimezone(UTC).timestamp())
        clocks = [
            clock
            for clock in self._api.test_helpers.test_clocks.list(_PAGE).auto_paging_iter()
            if (clock.name or "").startswith(CLOCK_PREFIX) and clock.frozen_time < target
        ]
        if clocks:
            self.advance([clock.id for clock in clocks], moment)
        for clock in clocks:
            customer = clock.name.removeprefix(CLOCK_PREFIX)
            say(f"  {customer}: test clock at {moment:%Y-%m-%dT%H:%M:%SZ}")
        return len(clocks)


class _Ids:
    """Stripe ids by file key: what existed, plus what this apply created."""

    def __init__(self, existing: Existing) -> None:
        self.existing = existing
        self.meters = {name: meter.id for name, meter in existing.meters.items()}
        self.products = {key: product.id for key, product in existing.products.items()}
        self.prices = {key: price.id for key, price in existing.prices.items()}
        self.customers = {key: customer.id for key, customer in existing.customers.items()}


def _key(kind: str, name: str, params: dict) -> dict[str, str]:
    """Request options for a create: the same object with the same fields gets the same key."""
    return {
        "idempotency_key": idempotency_key(
            "catalog_apply", kind, name, repr(sorted(params.items()))
        )
    }
