"""The catalog-loss decision: which reads may replace the last good catalog, and what the refusal
says. Pure values, no Stripe, no Dagster."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering_pipeline.catalog_sync.plausibility import (
    CatalogIds,
    catalog_loss,
    refusal_message,
)
from metering_pipeline.settings import SettingsError, load_settings


def ids(customers: int = 0, meters: int = 0, subscriptions: int = 0) -> CatalogIds:
    return CatalogIds(
        customers={f"cus_{n}": f"cus_{n} (app_{n})" for n in range(customers)},
        meters={f"mtr_{n}": f"meter_{n}" for n in range(meters)},
        subscriptions={f"sub_{n}": f"sub_{n} of cus_{n}" for n in range(subscriptions)},
    )


HALF = Decimal("0.5")


@pytest.mark.parametrize(
    ("previous", "current", "max_loss", "refused", "lost"),
    [
        # the first sync has nothing to lose
        (ids(), ids(), HALF, False, {}),
        (ids(), ids(3, 2, 3), HALF, False, {}),
        # a sandbox restart: everything gone
        (ids(6, 2, 6), ids(), HALF, True, {"customers": 6, "meters": 2, "subscriptions": 6}),
        # growth and no change
        (ids(4, 2, 4), ids(8, 3, 8), HALF, False, {}),
        (ids(4, 2, 4), ids(4, 2, 4), HALF, False, {}),
        # exactly the threshold is allowed, one more is not
        (ids(4, 2, 4), ids(2, 2, 4), HALF, False, {"customers": 2}),
        (ids(4, 2, 4), ids(1, 2, 4), HALF, True, {"customers": 3}),
        (ids(4, 2, 4), ids(4, 1, 4), HALF, False, {"meters": 1}),
        (ids(4, 2, 4), ids(4, 0, 4), HALF, True, {"meters": 2}),
        (ids(4, 2, 4), ids(4, 2, 1), HALF, True, {"subscriptions": 3}),
        # one kind over the threshold is enough
        (ids(10, 2, 10), ids(10, 2, 4), HALF, True, {"subscriptions": 6}),
        # a stricter and a disabled guard
        (ids(10, 2, 10), ids(8, 2, 10), Decimal("0.1"), True, {"customers": 2}),
        (ids(10, 2, 10), ids(), Decimal(1), False, {"customers": 10, "meters": 2,
                                                    "subscriptions": 10}),
    ],
)  # fmt: skip
def test_refuses_a_read_that_lost_most_of_a_kind(previous, current, max_loss, refused, lost):
    loss = catalog_loss(previous, current, max_loss)
    assert loss.refused is refused
    assert {kind: loss.lost_count(kind) for kind in lost} == lost
    assert sum(len(kind.lost) for kind in loss.losses) == sum(lost.values())


def test_replaced_ids_count_as_lost_even_when_the_count_is_unchanged():
    """Another account with as many objects is still a different catalog."""
    other = CatalogIds(
        customers={f"cus_other_{n}": f"cus_other_{n}" for n in range(4)},
        meters={f"mtr_{n}": f"meter_{n}" for n in range(2)},
        subscriptions={},
    )
    loss = catalog_loss(ids(4, 2, 0), other, HALF)
    assert loss.refused
    assert loss.lost_count("customers") == 4 and loss.lost_count("meters") == 0


def test_the_refusal_names_what_disappeared_and_the_way_out():
    loss = catalog_loss(ids(8, 2, 3), ids(0, 0, 3), HALF)
    message = refusal_message(loss, datetime(2026, 11, 20, 9, tzinfo=UTC))
    assert "customers: 8 of 8 gone (100%): cus_0 (app_0), cus_1 (app_1)" in message
    assert "and 3 more" in message
    assert "meters: 2 of 2 gone (100%): meter_0, meter_1" in message
    assert "subscriptions" not in message
    assert "2026-11-20T09:00:00+00:00" in message
    assert "keeps the last good catalog" in message
    assert "accept_catalog_loss: true" in message
    assert "METERING_CATALOG_MAX_LOSS=50%" in message


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, Decimal("0.5")), ("0.2", Decimal("0.2")), ("1", Decimal(1))]
)
def test_catalog_max_loss_setting(raw, expected):
    env = {} if raw is None else {"METERING_CATALOG_MAX_LOSS": raw}
    assert load_settings(env).catalog_max_loss == expected


@pytest.mark.parametrize("raw", ["1.5", "-0.1", "half"])
def test_catalog_max_loss_setting_rejects_what_is_not_a_share(raw):
    with pytest.raises(SettingsError, match="METERING_CATALOG_MAX_LOSS"):
        load_settings({"METERING_CATALOG_MAX_LOSS": raw})
