"""``metering stripe apply FILE`` and ``metering stripe clocks``: the catalog file into Stripe.

The sandbox (no ``STRIPE_API_KEY``) and a real account go through the same calls; the diff is
printed before anything changes, and ``--dry-run`` stops there.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from metering_pipeline.settings import Settings
from metering_pipeline.stripe_io.catalog_file import CatalogApplier, stripe_errors
from metering_pipeline.stripe_setup.plan import plan_catalog
from metering_pipeline.stripe_setup.spec import load_catalog_file


def applier(settings: Settings) -> CatalogApplier:
    return CatalogApplier(
        settings.stripe_api_key.reveal(),
        settings.stripe_api_base,
        requests_per_second=settings.stripe_requests_per_second,
        customer_metadata_key=settings.customer_metadata_key,
    )


def apply_catalog(
    settings: Settings, path: Path, *, dry_run: bool, say: Callable[[str], None] = print
) -> bool:
    """Print the changes, then make them unless ``dry_run``; False when a conflict stops it."""
    spec = load_catalog_file(path)
    stripe = applier(settings)
    where = "the sandbox" if settings.uses_sandbox else "the Stripe account of STRIPE_API_KEY"
    with stripe_errors(settings.stripe_api_base):
        existing = stripe.existing(spec)
        plan = plan_catalog(spec, existing)
        say(f"{path} against {where}:")
        for line in plan.lines():
            say(f"  {line}")
        if plan.conflicts:
            return False
        if dry_run or not plan.changes:
            return True
        stripe.apply(plan, existing, say)
    say("applied; a second apply of the same file changes nothing")
    return True


def advance_clocks(settings: Settings, moment: datetime, say: Callable[[str], None] = print) -> int:
    """Move the catalog file's test clocks to ``moment`` (UTC when it has no offset)."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    with stripe_errors(settings.stripe_api_base):
        moved = applier(settings).advance_clocks(moment, say)
    if not moved:
        say(f"no test clock of the catalog file is behind {moment:%Y-%m-%dT%H:%M:%SZ}")
    return moved
