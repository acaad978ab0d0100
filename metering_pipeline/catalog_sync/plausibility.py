"""Is a freshly read Stripe catalog plausible enough to replace the last good one?

Stripe never deletes a meter or a subscription (a canceled subscription is still listed), and a
deleted customer is rare. So a read in which most customers, meters or active subscriptions of
the last sync have vanished at once is not a business change: it is the wrong account or key,
or a Stripe (sandbox) that lost its state. Writing it would quarantine billed usage as
``unknown_meter``/``unmapped_customer`` and leave ledger entries pointing at customers we no
longer know. The decision is pure so it can be tested without Stripe or Dagster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering_pipeline.billing.catalog import Catalog

KINDS = ("customers", "meters", "subscriptions")
EXAMPLES_SHOWN = 5
ACCEPT_RUN_CONFIG = "ops: {stripe_catalog: {config: {accept_catalog_loss: true}}}"


@dataclass(frozen=True)
class CatalogIds:
    """Per kind, the ids a catalog holds, each with the label a person recognises it by."""

    customers: Mapping[str, str]
    meters: Mapping[str, str]
    subscriptions: Mapping[str, str]

    def of(self, kind: str) -> Mapping[str, str]:
        return getattr(self, kind)


@dataclass(frozen=True)
class KindLoss:
    """What one kind lost: ``before`` ids in the last good catalog, ``lost`` labels, sorted."""

    kind: str
    before: int
    lost: tuple[str, ...]

    @property
    def share(self) -> Decimal:
        return Decimal(len(self.lost)) / self.before if self.before else Decimal(0)

    def describe(self) -> str:
        shown = ", ".join(self.lost[:EXAMPLES_SHOWN])
        more = len(self.lost) - EXAMPLES_SHOWN
        return (
            f"{self.kind}: {len(self.lost)} of {self.before} gone ({self.share:.0%}): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )


@dataclass(frozen=True)
class CatalogLoss:
    """Every kind that lost anything; ``refused`` when one lost more than ``max_loss``."""

    losses: tuple[KindLoss, ...]
    max_loss: Decimal

    @property
    def refused(self) -> bool:
        return any(loss.share > self.max_loss for loss in self.losses)

    def describe(self) -> str:
        return "; ".join(loss.describe() for loss in self.losses)

    def lost_count(self, kind: str) -> int:
        return next((len(loss.lost) for loss in self.losses if loss.kind == kind), 0)


def catalog_ids(catalog: Catalog, metadata_key: str) -> CatalogIds:
    """The ids of a catalog read from Stripe; every listed subscription counts, of any status."""
    return CatalogIds(
        customers={
            c.id: customer_label(c.id, c.metadata.get(metadata_key)) for c in catalog.customers
        },
        meters={m.id: m.event_name for m in catalog.meters},
        subscriptions={
            s.id: subscription_label(s.id, s.customer_id) for s in catalog.subscriptions
        },
    )


def customer_label(stripe_customer_id: str, metering_customer_id: str | None) -> str:
    return (
        f"{stripe_customer_id} ({metering_customer_id})"
        if metering_customer_id
        else stripe_customer_id
    )


def subscription_label(subscription_id: str, stripe_customer_id: str) -> str:
    return f"{subscription_id} of {stripe_customer_id}"


def catalog_loss(previous: CatalogIds, current: CatalogIds, max_loss: Decimal) -> CatalogLoss:
    """What of ``previous`` (the last good catalog) ``current`` no longer lists, per kind."""
    losses = []
    for kind in KINDS:
        before, now = previous.of(kind), current.of(kind)
        lost = tuple(sorted(label for id_, label in before.items() if id_ not in now))
        if lost:
            losses.append(KindLoss(kind, len(before), lost))
    return CatalogLoss(tuple(losses), max_loss)


def refusal_message(loss: CatalogLoss, last_synced_at: datetime | None) -> str:
    """Why the sync refused, what disappeared, and the two ways forward."""
    when = f" (synced {last_synced_at.isoformat()})" if last_synced_at else ""
    return (
        "Stripe catalog sync refused: compared with the last good catalog"
        f"{when}, Stripe no longer lists "
        + loss.describe()
        + f". Losing more than METERING_CATALOG_MAX_LOSS={loss.max_loss:.0%} of a kind at once "
        "usually means the wrong Stripe account or key, or a Stripe (sandbox) that lost its "
        "state; replacing the catalog would quarantine billed usage and orphan ledger entries. "
        "The warehouse keeps the last good catalog. Check STRIPE_API_KEY and STRIPE_API_BASE "
        "(restore the sandbox state if it restarted empty) and sync again. If the change is "
        f"deliberate, run the sync once with run config `{ACCEPT_RUN_CONFIG}`, or raise "
        "METERING_CATALOG_MAX_LOSS."
    )
