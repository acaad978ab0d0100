"""The README's code-location path, run as written: its commands, in order, against a fresh
sandbox, end with finalized invoices whose amounts equal the source rows priced independently.
And every `metering` command the README shows parses against the CLI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
import stripe
import yaml

from metering_pipeline.cli import parse_args
from metering_pipeline.stripe_setup.spec import TierSpec
from metering_pipeline_tests.e2e.test_billing_period import tier_amount

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = README.split("## Running it as a code location", 1)[1].split("\n## ", 1)[0]
pytestmark = pytest.mark.timeout(900)


def readme_commands(text: str) -> list[list[str]]:
    """The `metering` command lines of the text's bash blocks, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("metering"):
                commands.append(words[1:])
    return commands


def test_every_metering_command_of_the_readme_parses():
    commands = readme_commands(README)
    assert len(commands) >= 9  # the code-location path alone has nine
    for words in commands:
        parse_args(words)  # argparse exits on anything it does not know


def test_the_code_location_path_bills_the_expected_invoices(tmp_path, stripe_sandbox):
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METERING_", "STRIPE_", "DAGSTER_"))
    }
    environment |= {"METERING_HOME": str(tmp_path / "home"), "STRIPE_API_BASE": stripe_sandbox.url}
    steps = [words for words in readme_commands(SECTION) if words[0] != "dev"]
    assert [words[0] for words in steps][:2] == ["stripe", "seed"]
    outputs = []
    for words in steps:
        result = subprocess.run(
            [sys.executable, "-m", "metering_pipeline.cli", *words],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{words}: {result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
        outputs.append(result.stdout)
    backfill = outputs[[words[0] for words in steps].index("backfill")]
    assert len(backfill.strip().splitlines()) <= 8, backfill  # a line per step, no dbt listing
    assert "quarantined" in backfill

    expected = expected_amounts(tmp_path / "home" / "source.duckdb")
    billed = finalized_invoices(stripe_sandbox.url)
    assert billed == expected
    assert all(amount > 0 for amount in billed.values())
    # The last reconciliation reads the finalized invoices and flags nothing.
    assert "| yes |" not in outputs[-1]
    assert outputs[-1].count("(open)") + outputs[-1].count("(paid)") == 6


def expected_amounts(source: Path) -> dict[str, int]:
    """Minor units per customer: the source rows summed per meter, priced with the catalog
    file's tiers by the test's own tier maths."""
    catalog = yaml.safe_load((ROOT / "examples" / "stripe_catalog.yaml").read_text())
    prices = {price["lookup_key"]: price for price in catalog["prices"]}
    with duckdb.connect(str(source), read_only=True) as conn:
        rows = conn.execute(
            "select customer_id, meter, cast(sum(quantity) as varchar) from usage_events "
            "group by all"
        ).fetchall()
    usage = {(customer, meter): Decimal(total) for customer, meter, total in rows}
    amounts: dict[str, int] = defaultdict(int)
    for subscription in catalog["subscriptions"]:
        for lookup_key in subscription["prices"]:
            price = prices[lookup_key]
            quantity = usage.get((subscription["customer"], price["meter"]), Decimal(0))
            if "tiers" in price:
                tiers = tuple(
                    TierSpec(None if tier["up_to"] == "inf" else tier["up_to"],
                             Decimal(tier["unit_amount_decimal"]), tier.get("flat_amount", 0))
                    for tier in price["tiers"]
                )  # fmt: skip
                amounts[subscription["customer"]] += tier_amount(
                    price["tiers_mode"], tiers, quantity
                )
            else:
                tiers = (TierSpec(None, Decimal(price["unit_amount_decimal"])),)
                amounts[subscription["customer"]] += tier_amount("graduated", tiers, quantity)
    return dict(amounts)


def finalized_invoices(base: str) -> dict[str, int]:
    """The amount due of each customer's November invoice, by our customer id."""
    client = stripe.StripeClient("sk_test_readme", base_addresses={"api": base})
    billed = {}
    for customer in client.v1.customers.list({"limit": 100}).data:
        invoices = client.v1.invoices.list({"customer": customer.id, "limit": 100}).data
        cycle = [invoice for invoice in invoices if invoice.billing_reason == "subscription_cycle"]
        assert len(cycle) == 1, (customer.id, [invoice.status for invoice in invoices])
        assert cycle[0].status in ("open", "paid")
        billed[customer.metadata["metering_customer_id"]] = cycle[0].amount_due
    return billed
