"""Pure parts of the source side: ids the seed writes, and URLs fit for messages."""

import pytest

from metering_pipeline.sources.reader import redact
from metering_pipeline.sources.seed import customer_id


@pytest.mark.parametrize(
    ("number", "customers", "expected"),
    [(1, 50, "customer_0001"), (9999, 9999, "customer_9999"), (7, 12345, "customer_00007")],
)
def test_customer_ids(number: int, customers: int, expected: str) -> None:
    assert customer_id(number, customers) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/prod", "postgresql://app:****@db:5432/prod"),
        ("postgresql://app@db/prod", "postgresql://app@db/prod"),
        ("duckdb:///tmp/source.duckdb", "duckdb:///tmp/source.duckdb"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown
