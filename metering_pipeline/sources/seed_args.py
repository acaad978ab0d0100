"""Arguments of ``metering seed``; kept apart so the CLI can build its parser without DuckDB."""

from __future__ import annotations

import argparse


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help="source database URL (default: METERING_SOURCE_URL)"
    )
    parser.add_argument("--customers", type=int, default=50, help="customers customer_0001...")
    parser.add_argument(
        "--meters", default="api_calls,storage_gb", help="comma-separated meter event names"
    )
    parser.add_argument(
        "--start", default=None, help="first instant, ISO 8601 (default: midnight UTC, DAYS ago)"
    )
    parser.add_argument("--days", type=int, default=30, help="days of usage from --start")
    parser.add_argument("--events", type=int, default=1_000_000, help="regular events to write")
    parser.add_argument("--seed", type=int, default=42, help="same seed, same rows")
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="add duplicates, conflicts, late, malformed, refund and boundary rows",
    )
    parser.add_argument(
        "--replace", action="store_true", help="delete the table's existing rows first"
    )
