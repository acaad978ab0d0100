"""Every environment variable the pipeline reads, in one place, validated at start-up.

Defaults run the whole product on one machine with no network: a DuckDB warehouse and source
under ``.metering/`` (git ignores it), a SQLite Dagster instance, and the Stripe sandbox.
Each bad value raises ``SettingsError`` naming the variable, the value and what would be accepted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

SANDBOX_DEFAULT_PORT = 12111
SANDBOX_API_KEY = "sk_test_metering_sandbox"
LATE_USAGE_POLICIES = ("hold", "invoice_item", "write_off")
AGGREGATION_MODES = ("sum", "count", "max", "last_during_period", "last_ever")
UNIT_ROUNDINGS = ("half_up", "half_even", "up", "down", "exact")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class Secret:
    """A string that never shows itself in repr, str, logs or metadata."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    home: Path
    warehouse_url: str
    source_url: str
    source_dir: Path | None
    stripe_api_key: Secret
    stripe_api_base: str | None
    stripe_meter_events_base: str | None
    uses_sandbox: bool
    customer_metadata_key: str
    meter_modes: Mapping[str, str]
    meter_units: Mapping[str, tuple[int, str]]
    partitions_start: str
    reconciliation_threshold: Decimal
    late_usage_policy: str
    schedule_lag_minutes: int
    late_lookback_hours: int
    stripe_requests_per_second: float
    stripe_max_retries: int
    quantity_min: Decimal
    quantity_max: Decimal
    max_quarantine_share: Decimal
    extract_batch_rows: int
    alert_webhook_url: str | None
    finalization_grace_hours: int = field(default=1)
    event_id_max_length: int = field(default=255)
    catalog_max_loss: Decimal = field(default=Decimal("0.5"))

    @property
    def warehouse_kind(self) -> str:
        return url_kind(self.warehouse_url, "METERING_WAREHOUSE_URL")

    @property
    def source_kind(self) -> str:
        return url_kind(self.source_url, "METERING_SOURCE_URL")


def url_kind(url: str, variable: str) -> str:
    """'duckdb' or 'postgres', from a warehouse or source URL."""
    if url.startswith("duckdb:///"):
        return "duckdb"
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return "postgres"
    raise SettingsError(
        f"{variable}={url!r} is not a supported URL; use duckdb:///path/to/file.duckdb "
        "or postgresql://user@host:port/database"
    )


def duckdb_path(url: str) -> Path:
    return Path(url.removeprefix("duckdb:///"))


def _decimal(
    env: Mapping[str, str], name: str, default: str, low: Decimal | None = None
) -> Decimal:
    raw = env.get(name, default)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name}={raw!r} is not a number; e.g. {name}={default}") from None
    if not value.is_finite() or (low is not None and value < low):
        raise SettingsError(f"{name}={raw!r} must be a finite number >= {low}")
    return value


def _int(
    env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    raw = env.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a whole number; e.g. {name}={default}"
        ) from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(f"{name}={raw!r} must be {bounds}")
    return value


PARTITIONS_START_FORMAT = "%Y-%m-%d-%H:%M"


def _partitions_start(env: Mapping[str, str]) -> str:
    """The first hourly partition, in the format Dagster's hourly partitions use."""
    raw = env.get("METERING_PARTITIONS_START", "2026-01-01-00:00")
    try:
        start = datetime.strptime(raw, PARTITIONS_START_FORMAT)
    except ValueError:
        raise SettingsError(
            f"METERING_PARTITIONS_START={raw!r} is not a UTC hour like 2026-01-01-00:00 "
            "(year-month-day-hour:minute, minute 00)"
        ) from None
    if start.minute != 0:
        raise SettingsError(
            f"METERING_PARTITIONS_START={raw!r} must start on the hour (minute 00): "
            "partitions are whole UTC hours"
        )
    return raw


def _meter_modes(raw: str) -> dict[str, str]:
    """Parse ``event_name=mode,...`` (or a JSON object) into a mapping, checking each mode."""
    if not raw.strip():
        return {}
    try:
        pairs = json.loads(raw) if raw.lstrip().startswith("{") else None
    except json.JSONDecodeError as error:
        raise SettingsError(f"METERING_METER_MODES is not valid JSON: {error}") from None
    if pairs is None:
        pairs = {}
        for item in raw.split(","):
            name, sep, mode = item.partition("=")
            if not sep:
                raise SettingsError(
                    f"METERING_METER_MODES entry {item!r} must look like event_name=mode"
                )
            pairs[name.strip()] = mode.strip()
    for name, mode in pairs.items():
        if mode not in AGGREGATION_MODES:
            raise SettingsError(
                f"METERING_METER_MODES gives meter {name!r} the mode {mode!r}; "
                f"choose one of {', '.join(AGGREGATION_MODES)}"
            )
    return dict(pairs)


def _meter_units(raw: str) -> dict[str, tuple[int, str]]:
    """Parse ``event_name=scale[:rounding],...`` (e.g. ``storage_gb=1000:half_up``)."""
    units: dict[str, tuple[int, str]] = {}
    for item in filter(str.strip, raw.split(",")):
        name, sep, spec = item.partition("=")
        scale, _, rounding = spec.strip().partition(":")
        rounding = rounding.strip() or "half_up"
        if not sep or not name.strip() or not scale.strip().isdigit() or int(scale) < 1:
            raise SettingsError(
                f"METERING_METER_UNITS entry {item!r} must look like event_name=scale[:rounding] "
                "with a whole scale >= 1, e.g. storage_gb=1000:half_up"
            )
        if rounding not in UNIT_ROUNDINGS:
            raise SettingsError(
                f"METERING_METER_UNITS gives meter {name.strip()!r} the rounding {rounding!r}; "
                f"choose one of {', '.join(UNIT_ROUNDINGS)}"
            )
        units[name.strip()] = (int(scale), rounding)
    return units


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment. Pass ``env`` in tests instead of patching os.environ."""
    env = os.environ if env is None else env
    home = Path(env.get("METERING_HOME", ".metering")).resolve()
    warehouse_url = env.get("METERING_WAREHOUSE_URL", f"duckdb:///{home / 'warehouse.duckdb'}")
    source_url = env.get("METERING_SOURCE_URL", f"duckdb:///{home / 'source.duckdb'}")
    url_kind(warehouse_url, "METERING_WAREHOUSE_URL")
    url_kind(source_url, "METERING_SOURCE_URL")

    source_dir = (
        Path(env["METERING_SOURCE_DIR"]).resolve() if env.get("METERING_SOURCE_DIR") else None
    )
    if source_dir is not None and not source_dir.is_dir():
        raise SettingsError(f"METERING_SOURCE_DIR={str(source_dir)!r} is not a folder")

    key = env.get("STRIPE_API_KEY", "")
    uses_sandbox = not key
    if key and not key.startswith(("sk_test_", "sk_live_", "rk_test_", "rk_live_")):
        raise SettingsError(
            "STRIPE_API_KEY does not look like a Stripe secret or restricted key "
            "(sk_test_, sk_live_, rk_test_ or rk_live_); the value is not shown"
        )
    sandbox_base = f"http://127.0.0.1:{SANDBOX_DEFAULT_PORT}"
    api_base = env.get("STRIPE_API_BASE") or (sandbox_base if uses_sandbox else None)
    meter_events_base = env.get("STRIPE_METER_EVENTS_BASE") or (api_base if uses_sandbox else None)

    policy = env.get("METERING_LATE_USAGE_POLICY", "hold")
    if policy not in LATE_USAGE_POLICIES:
        raise SettingsError(
            f"METERING_LATE_USAGE_POLICY={policy!r}; choose one of {', '.join(LATE_USAGE_POLICIES)}"
        )
    rps = float(_decimal(env, "METERING_STRIPE_REQUESTS_PER_SECOND", "20", Decimal("0.1")))
    quantity_min = _decimal(env, "METERING_QUANTITY_MIN", "-1000000000")
    quantity_max = _decimal(env, "METERING_QUANTITY_MAX", "1000000000")
    if quantity_min >= quantity_max:
        raise SettingsError("METERING_QUANTITY_MIN must be below METERING_QUANTITY_MAX")
    share = _decimal(env, "METERING_MAX_QUARANTINE_SHARE", "0.05", Decimal(0))
    if share > 1:
        raise SettingsError(f"METERING_MAX_QUARANTINE_SHARE={share} must be between 0 and 1")
    catalog_max_loss = _decimal(env, "METERING_CATALOG_MAX_LOSS", "0.5", Decimal(0))
    if catalog_max_loss > 1:
        raise SettingsError(
            f"METERING_CATALOG_MAX_LOSS={catalog_max_loss} must be between 0 and 1 (a share: "
            "0.5 refuses a catalog sync that loses more than half of the customers, meters or "
            "subscriptions at once; 1 turns the guard off)"
        )

    return Settings(
        home=home,
        warehouse_url=warehouse_url,
        source_url=source_url,
        source_dir=source_dir,
        stripe_api_key=Secret(key or SANDBOX_API_KEY),
        stripe_api_base=api_base,
        stripe_meter_events_base=meter_events_base,
        uses_sandbox=uses_sandbox,
        customer_metadata_key=env.get("METERING_CUSTOMER_METADATA_KEY", "metering_customer_id"),
        meter_modes=_meter_modes(env.get("METERING_METER_MODES", "")),
        meter_units=_meter_units(env.get("METERING_METER_UNITS", "")),
        partitions_start=_partitions_start(env),
        reconciliation_threshold=_decimal(
            env, "METERING_RECONCILIATION_THRESHOLD", "0.01", Decimal(0)
        ),
        late_usage_policy=policy,
        schedule_lag_minutes=_int(env, "METERING_SCHEDULE_LAG_MINUTES", 15, high=1439),
        late_lookback_hours=_int(env, "METERING_LATE_LOOKBACK_HOURS", 3),
        stripe_requests_per_second=rps,
        stripe_max_retries=_int(env, "METERING_STRIPE_MAX_RETRIES", 6),
        quantity_min=quantity_min,
        quantity_max=quantity_max,
        max_quarantine_share=share,
        extract_batch_rows=_int(env, "METERING_EXTRACT_BATCH_ROWS", 250_000, low=1),
        alert_webhook_url=env.get("METERING_ALERT_WEBHOOK_URL") or None,
        finalization_grace_hours=_int(env, "METERING_FINALIZATION_GRACE_HOURS", 1, low=0),
        # longer event ids are quarantined (event_id_too_long)
        event_id_max_length=_int(env, "METERING_EVENT_ID_MAX_LENGTH", 255, low=1),
        catalog_max_loss=catalog_max_loss,
    )
