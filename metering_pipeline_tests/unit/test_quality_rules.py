"""Pure parts of validation: the number grammar, SQL literals, and the count arithmetic."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from metering_pipeline.quality.report import HourCounts, WindowCounts
from metering_pipeline.quality.rules import NUMBER_PATTERN, ValidationRules, routing_sql
from metering_pipeline.quality.tables import REASON_CODES, reason
from metering_pipeline.sources.tables import sql_literal

START = datetime(2026, 10, 1, 10, tzinfo=UTC)
RULES = ValidationRules(Decimal(-10), Decimal(10), "metering_customer_id")


@pytest.mark.parametrize(
    ("text", "is_number"),
    [
        ("1", True),
        ("-2.5", True),
        ("+3.", True),
        (".5", True),
        ("1e5", True),
        ("1E-3", True),
        ("0.000000000001", True),
        ("abc", False),
        ("NaN", False),
        ("inf", False),
        ("-Infinity", False),
        ("1,5", False),
        ("1e", False),
        ("--1", False),
        ("", False),
        (".", False),
    ],
)
def test_number_grammar(text: str, is_number: bool) -> None:
    assert bool(re.fullmatch(NUMBER_PATTERN, text)) is is_number


@pytest.mark.parametrize("kind", ["duckdb", "postgres"])
def test_routing_sql_survives_the_placeholder_translation(kind: str) -> None:
    """warehouse.Connection turns every "?" into a psycopg placeholder and psycopg reads "%"."""
    rules = ValidationRules(Decimal(-10), Decimal(10), "app's_id")
    sql = routing_sql(kind, START, START + timedelta(hours=1), START, rules)
    assert "?" not in sql and "%" not in sql
    assert "'app''s_id'" in sql


def test_sql_literals() -> None:
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal(START) == "cast('2026-10-01T10:00:00+00:00' as timestamptz)"
    assert sql_literal(Decimal("1.5")) == "cast('1.5' as decimal(38, 12))"


def test_window_counts_add_up_per_hour() -> None:
    good = HourCounts(START, extracted=10, accepted=8, quarantined=2)
    lost = HourCounts(START + timedelta(hours=1), extracted=10, accepted=8, quarantined=1)
    counts = WindowCounts(hours=(good, lost), by_reason={"bad_quantity": 3})
    assert good.adds_up and not lost.adds_up
    assert (counts.extracted, counts.accepted, counts.quarantined) == (20, 16, 3)
    assert counts.quarantine_share == pytest.approx(0.15)
    assert WindowCounts(hours=(), by_reason={}).quarantine_share == 0.0


def test_reason_codes_are_one_list_for_rules_and_docs() -> None:
    """The routing SQL writes only known codes, every code has a rule, and the doc lists them
    all in the same order."""
    sql = routing_sql("duckdb", START, START + timedelta(hours=1), START, RULES)
    # the case expressions that end "as reason_code", and the one that writes each message
    assigning = [part.rsplit("case", 1)[-1] for part in sql.split("as reason_code")[:-1]]
    assigned = re.findall(r"then '([a-z_]+)'", "".join(assigning))
    explained = re.findall(r"\n\s*when '([a-z_]+)' then", sql.split("case reason_code")[1])
    assert sorted(assigned) == sorted(REASON_CODES)
    assert set(explained) == set(REASON_CODES) - {"conflicting_duplicate"}  # its own sentence
    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text()
    listed = doc.split("<!-- reason-codes -->")[1].split("<!-- /reason-codes -->")[0]
    assert re.findall(r"^\s*- `([a-z_]+)`:", listed, re.MULTILINE) == list(REASON_CODES)
    with pytest.raises(ValueError, match="no reason code"):
        reason("missing_feild")  # type: ignore[arg-type]
