"""Products, prices, customers, billing meters and test clocks: create, read, update, list."""

from __future__ import annotations

import re
from decimal import Decimal

from .errors import StripeError, missing, param_error
from .params import (
    boolean,
    choice,
    decimal,
    integer,
    listing,
    mapping,
    merge_metadata,
    text,
)
from .store import Store, require_state

CURRENCIES = ("usd", "eur", "gbp", "cad", "aud", "chf", "jpy", "sek", "dkk", "nok")


# -- products ------------------------------------------------------------------------------------


def create_product(store: Store, params: dict) -> dict:
    now = store.now()
    product = store.add(
        "prod",
        {
            "object": "product",
            "active": boolean(params, "active", True),
            "created": now,
            "default_price": None,
            "description": text(params, "description"),
            "images": [],
            "marketing_features": [],
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "name": text(params, "name", required=True),
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": text(params, "statement_descriptor"),
            "tax_code": None,
            "unit_label": text(params, "unit_label"),
            "updated": now,
            "url": None,
            "type": "service",
        },
    )
    store.emit("product.created", product)
    return product


def update_product(store: Store, product: dict, params: dict) -> dict:
    before = store.render(product)
    for key in ("name", "description", "unit_label", "statement_descriptor"):
        if key in params:
            product[key] = text(params, key)
    if "active" in params:
        product["active"] = boolean(params, "active")
    if "default_price" in params:
        price = store.get(text(params, "default_price"), "price", "default_price")
        require_state(price["product"] == product["id"], "The default price must be the product's.")
        product["default_price"] = price["id"]
    product["metadata"] = merge_metadata(product["metadata"], mapping(params, "metadata"))
    product["updated"] = store.now()
    store.emit_update("product.updated", product, before)
    return product


def delete_product(store: Store, product: dict) -> dict:
    if any(price["product"] == product["id"] for price in store.all("price")):
        raise StripeError(
            "This product cannot be deleted because it has one or more user-created prices.",
            code="resource_in_use",
        )
    product["_deleted"] = True
    store.emit("product.deleted", product)
    return {"id": product["id"], "object": "product", "deleted": True}


# -- prices --------------------------------------------------------------------------------------


def _param_name(prefix: str, name: str) -> str:
    return f"{prefix}[{name}]" if prefix else name


def _amount_decimal(params: dict, prefix: str, whole: str, fractional: str) -> str | None:
    """Read `unit_amount` or `unit_amount_decimal` (at most one of them) as a decimal string;
    decimals take at most 12 decimal places, as in Stripe."""
    given = [name for name in (whole, fractional) if params.get(name) not in (None, "")]
    if len(given) == 2:
        raise param_error(
            _param_name(prefix, fractional),
            f"You may only specify one of {whole} and {fractional}.",
        )
    if not given:
        return None
    name = given[0]
    amount = Decimal(integer(params, name)) if name == whole else decimal(params, name)
    if amount < 0:
        raise param_error(_param_name(prefix, name), f"{name} must be zero or more.")
    if -amount.normalize().as_tuple().exponent > 12:
        raise param_error(_param_name(prefix, name), f"{name} allows at most 12 decimal places.")
    return format(amount.normalize(), "f")


def _tiers(params: dict) -> list[dict]:
    raw = listing(params, "tiers")
    if not raw:
        raise missing("tiers")
    tiers, previous = [], Decimal(0)
    for index, tier in enumerate(raw):
        prefix = f"tiers[{index}]"
        up_to_text = text(tier, "up_to", required=True)
        last = index == len(raw) - 1
        if up_to_text == "inf":
            if not last:
                raise param_error(f"{prefix}[up_to]", "Only the last tier can have up_to: inf.")
            up_to = None
        else:
            if last:
                raise param_error(f"{prefix}[up_to]", "The last tier must have up_to: inf.")
            up_to = integer(tier, "up_to")
            if up_to <= previous:
                raise param_error(f"{prefix}[up_to]", "Tiers' up_to must increase strictly.")
            previous = Decimal(up_to)
        unit = _amount_decimal(tier, prefix, "unit_amount", "unit_amount_decimal")
        flat = _amount_decimal(tier, prefix, "flat_amount", "flat_amount_decimal")
        if unit is None and flat is None:
            raise param_error(
                f"{prefix}[unit_amount]", "Each tier needs a unit amount, a flat amount, or both."
            )
        tiers.append(
            {
                "flat_amount": _whole_or_none(flat),
                "flat_amount_decimal": flat,
                "unit_amount": _whole_or_none(unit),
                "unit_amount_decimal": unit,
                "up_to": up_to,
            }
        )
    return tiers


def _whole_or_none(amount: str | None) -> int | None:
    if amount is None:
        return None
    value = Decimal(amount)
    return int(value) if value == value.to_integral_value() else None


def create_price(store: Store, params: dict) -> dict:
    currency = (text(params, "currency", required=True)).lower()
    if currency not in CURRENCIES:
        raise param_error("currency", f"Invalid currency: {currency}.")
    if "product_data" in params:
        product = create_product(store, mapping(params, "product_data"))
    else:
        product = store.get(text(params, "product", required=True), "product", "product")
    scheme = choice(params, "billing_scheme", ("per_unit", "tiered"), "per_unit")
    recurring_params = mapping(params, "recurring")
    recurring = None
    if recurring_params:
        usage_type = choice(recurring_params, "usage_type", ("licensed", "metered"), "licensed")
        meter_id = text(recurring_params, "meter")
        if usage_type == "metered" and not meter_id:
            raise param_error(
                "recurring[meter]",
                "Metered prices must be backed by a billing meter: pass recurring[meter].",
                "parameter_missing",
            )
        if meter_id:
            store.get(meter_id, "billing.meter", "recurring[meter]")
        recurring = {
            "interval": choice(
                recurring_params,
                "interval",
                ("day", "week", "month", "year"),
                required_as="recurring[interval]",
            ),
            "interval_count": integer(recurring_params, "interval_count", default=1),
            "meter": meter_id,
            "usage_type": usage_type,
            "trial_period_days": integer(recurring_params, "trial_period_days"),
        }
    price = {
        "object": "price",
        "active": boolean(params, "active", True),
        "billing_scheme": scheme,
        "created": store.now(),
        "currency": currency,
        "custom_unit_amount": None,
        "lookup_key": text(params, "lookup_key"),
        "metadata": merge_metadata({}, mapping(params, "metadata")),
        "nickname": text(params, "nickname"),
        "product": product["id"],
        "recurring": recurring,
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": None,
        "unit_amount_decimal": None,
        "_tiers": None,
    }
    if scheme == "per_unit":
        unit = _amount_decimal(params, "", "unit_amount", "unit_amount_decimal")
        if unit is None:
            raise missing("unit_amount")
        price["unit_amount_decimal"] = unit
        price["unit_amount"] = _whole_or_none(unit)
        transform = mapping(params, "transform_quantity")
        if transform:
            divide_by = integer(transform, "divide_by", required=True)
            if divide_by < 1:
                raise param_error("transform_quantity[divide_by]", "divide_by must be positive.")
            price["transform_quantity"] = {
                "divide_by": divide_by,
                "round": choice(
                    transform, "round", ("up", "down"), required_as="transform_quantity[round]"
                ),
            }
    else:
        if "transform_quantity" in params:
            raise param_error(
                "transform_quantity", "transform_quantity cannot be used with tiered prices."
            )
        price["tiers_mode"] = choice(
            params, "tiers_mode", ("graduated", "volume"), required_as="tiers_mode"
        )
        price["_tiers"] = _tiers(params)
    _check_lookup_key(store, price["lookup_key"], params)
    store.add("price", price)
    store.emit("price.created", price)
    return price


def _check_lookup_key(store: Store, lookup_key: str | None, params: dict) -> None:
    if not lookup_key:
        return
    holders = [price for price in store.all("price") if price["lookup_key"] == lookup_key]
    if holders and not boolean(params, "transfer_lookup_key", False):
        raise param_error(
            "lookup_key",
            f"A price ({holders[0]['id']}) already uses the lookup key '{lookup_key}'; "
            "pass transfer_lookup_key=true to move it.",
        )
    for holder in holders:
        holder["lookup_key"] = None


def update_price(store: Store, price: dict, params: dict) -> dict:
    before = store.render(price)
    if "active" in params:
        price["active"] = boolean(params, "active")
    if "nickname" in params:
        price["nickname"] = text(params, "nickname")
    if "lookup_key" in params:
        _check_lookup_key(store, text(params, "lookup_key"), params)
        price["lookup_key"] = text(params, "lookup_key")
    price["metadata"] = merge_metadata(price["metadata"], mapping(params, "metadata"))
    store.emit_update("price.updated", price, before)
    return price


def list_prices(store: Store, params: dict) -> list[dict]:
    prices = store.all("price")
    if "product" in params:
        prices = [p for p in prices if p["product"] == text(params, "product")]
    if "active" in params:
        prices = [p for p in prices if p["active"] == boolean(params, "active")]
    if "type" in params:
        prices = [p for p in prices if p["type"] == text(params, "type")]
    if "currency" in params:
        prices = [p for p in prices if p["currency"] == text(params, "currency")]
    lookup_keys = listing(params, "lookup_keys")
    if lookup_keys:
        prices = [p for p in prices if p["lookup_key"] in lookup_keys]
    recurring = mapping(params, "recurring")
    if "usage_type" in recurring:
        prices = [
            p
            for p in prices
            if p["recurring"] and p["recurring"]["usage_type"] == recurring["usage_type"]
        ]
    if "meter" in recurring:
        prices = [
            p for p in prices if p["recurring"] and p["recurring"]["meter"] == recurring["meter"]
        ]
    return prices


# -- customers -----------------------------------------------------------------------------------


def create_customer(store: Store, params: dict) -> dict:
    clock_id = text(params, "test_clock")
    if clock_id:
        clock = store.get(clock_id, "test_helpers.test_clock", "test_clock")
        require_state(
            clock["status"] == "ready",
            f"Test clock {clock_id} is advancing; wait until its status is ready.",
            "test_clock",
        )
    customer = store.add(
        "cus",
        {
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": 0,
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": text(params, "description"),
            "discount": None,
            "email": text(params, "email"),
            "invoice_prefix": "",
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "metadata": merge_metadata({}, mapping(params, "metadata")),
            "name": text(params, "name"),
            "next_invoice_sequence": 1,
            "phone": text(params, "phone"),
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": clock_id,
        },
    )
    customer["invoice_prefix"] = customer["id"][4:12].upper()
    customer["created"] = store.now(customer["id"])
    store.emit("customer.created", customer)
    return customer


def update_customer(store: Store, customer: dict, params: dict) -> dict:
    before = store.render(customer)
    for key in ("email", "name", "description", "phone"):
        if key in params:
            customer[key] = text(params, key)
    customer["metadata"] = merge_metadata(customer["metadata"], mapping(params, "metadata"))
    store.emit_update("customer.updated", customer, before)
    return customer


def delete_customer(store: Store, customer: dict) -> dict:
    for subscription in store.all("subscription"):
        if subscription["customer"] == customer["id"] and subscription["status"] != "canceled":
            subscription["status"] = "canceled"
            subscription["canceled_at"] = subscription["ended_at"] = store.now(customer["id"])
            store.emit("customer.subscription.deleted", subscription)
    customer["_deleted"] = True
    store.emit("customer.deleted", customer)
    return {"id": customer["id"], "object": "customer", "deleted": True}


def list_customers(store: Store, params: dict) -> list[dict]:
    customers = store.all("customer")
    if "email" in params:
        customers = [c for c in customers if c["email"] == text(params, "email")]
    if "test_clock" in params:
        customers = [c for c in customers if c["test_clock"] == text(params, "test_clock")]
    return customers


def search_customers(store: Store, params: dict) -> list[dict]:
    """Stripe's search language, for the clauses we use: `metadata['k']:'v'`, `email:'x'`,
    joined with AND."""
    query = text(params, "query", required=True)
    clause = re.compile(
        r"""^\s*(metadata\[['"](?P<key>[^'"]+)['"]\]|(?P<field>email|name))\s*:\s*['"](?P<value>[^'"]*)['"]\s*$"""
    )
    tests = []
    for part in re.split(r"\s+AND\s+", query):
        match = clause.match(part)
        if not match:
            raise param_error(
                "query",
                f"The sandbox understands search clauses like metadata['key']:'value' or "
                f"email:'a@b.c' joined by AND; could not read {part.strip()!r}.",
            )
        tests.append(match.groupdict())

    def matches(customer: dict) -> bool:
        for test in tests:
            if test["key"] is not None:
                if customer["metadata"].get(test["key"]) != test["value"]:
                    return False
            elif customer.get(test["field"]) != test["value"]:
                return False
        return True

    return [customer for customer in store.all("customer") if matches(customer)]


# -- billing meters ------------------------------------------------------------------------------


def create_meter(store: Store, params: dict) -> dict:
    event_name = text(params, "event_name", required=True)
    if any(meter["event_name"] == event_name for meter in store.all("billing.meter")):
        raise param_error(
            "event_name",
            f"A meter with event_name '{event_name}' already exists; event names are unique.",
            "resource_already_exists",
        )
    aggregation = mapping(params, "default_aggregation")
    formula = choice(aggregation, "formula", ("sum", "count", "last"), None)
    if formula is None:
        raise missing("default_aggregation[formula]")
    mapping_params = mapping(params, "customer_mapping")
    value_settings = mapping(params, "value_settings")
    now = store.now()
    meter = store.add(
        "mtr",
        {
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": text(
                    mapping_params, "event_payload_key", default="stripe_customer_id"
                ),
                "type": "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": text(params, "display_name", required=True),
            "event_name": event_name,
            "event_time_window": choice(params, "event_time_window", ("hour", "day")),
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {
                "event_payload_key": text(value_settings, "event_payload_key", default="value")
            },
        },
    )
    store.emit("billing.meter.created", meter)
    return meter


def update_meter(store: Store, meter: dict, params: dict) -> dict:
    changeable = {"display_name", "expand"}
    fixed = sorted(set(params) - changeable)
    if fixed:
        raise param_error(
            fixed[0], f"Only display_name can change on a meter; {fixed[0]} is fixed at creation."
        )
    before = store.render(meter)
    if "display_name" in params:
        meter["display_name"] = text(params, "display_name", required=True)
    meter["updated"] = store.now()
    store.emit_update("billing.meter.updated", meter, before)
    return meter


def set_meter_status(store: Store, meter: dict, active: bool) -> dict:
    wanted = "active" if active else "inactive"
    require_state(meter["status"] != wanted, f"Meter {meter['id']} is already {wanted}.", "id")
    meter["status"] = wanted
    meter["updated"] = store.now()
    meter["status_transitions"]["deactivated_at"] = None if active else meter["updated"]
    store.emit("billing.meter.reactivated" if active else "billing.meter.deactivated", meter)
    return meter


# -- test clocks ---------------------------------------------------------------------------------


def create_clock(store: Store, params: dict) -> dict:
    frozen = integer(params, "frozen_time", required=True)
    clock = store.add(
        "clock",
        {
            "object": "test_helpers.test_clock",
            "created": store.now(),
            "deletes_after": store.now() + 30 * 86400,
            "frozen_time": frozen,
            "name": text(params, "name"),
            "status": "ready",
            "status_details": {},
        },
    )
    store.emit("test_helpers.test_clock.created", clock)
    return clock


def delete_clock(store: Store, clock: dict) -> dict:
    for customer in store.all("customer"):
        if customer["test_clock"] == clock["id"]:
            customer["_deleted"] = True
    clock["_deleted"] = True
    store.emit("test_helpers.test_clock.deleted", clock)
    return {"id": clock["id"], "object": "test_helpers.test_clock", "deleted": True}


def require_price_active(price: dict, param: str) -> None:
    if not price["active"]:
        raise StripeError(
            f"The price {price['id']} is inactive; activate it or pick an active price.",
            param=param,
        )
