"""Our errors for Stripe calls: they say what failed, for which customer, meter and period, and what
to do, and they never carry the API key (Stripe's own messages can echo part of it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_KEY_PATTERN = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*_]+")


@dataclass(frozen=True)
class CallContext:
    """What a call is about, so that an error can name it; every field is optional."""

    customer: str | None = None
    meter: str | None = None
    period: tuple[datetime, datetime] | None = None
    subscription_item: str | None = None
    subscription: str | None = None

    def describe(self) -> str:
        parts = [
            f"customer {self.customer}" if self.customer else "",
            f"meter {self.meter}" if self.meter else "",
            f"subscription {self.subscription}" if self.subscription else "",
            f"subscription item {self.subscription_item}" if self.subscription_item else "",
            f"period {_iso(self.period[0])}/{_iso(self.period[1])}" if self.period else "",
        ]
        return ", ".join(part for part in parts if part)


class StripeIOError(Exception):
    """A Stripe call did not succeed. ``str()`` is a complete sentence for the person on call."""

    def __init__(
        self,
        operation: str,
        context: CallContext,
        detail: str,
        advice: str,
        *,
        http_status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.operation = operation
        self.context = context
        self.http_status = http_status
        self.code = code
        self.request_id = request_id
        about = context.describe()
        where = f" ({about})" if about else ""
        request = f" [Stripe request {request_id}]" if request_id else ""
        super().__init__(f"{operation}{where}: {detail}. {advice}{request}")


class StripeRejectedError(StripeIOError):
    """Stripe answered and refused: the request was not recorded, and repeating it will not help."""


class StripeAuthenticationError(StripeRejectedError):
    """The key is wrong, revoked, or lacks a permission this call needs."""


class StripeUnavailableError(StripeIOError):
    """No definite answer within the retry budget: for a write, Stripe may or may not have it."""


def redact(text: str, secret: str) -> str:
    """``text`` with the key, and anything shaped like a Stripe key, replaced."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
