"""The only package that imports the Stripe SDK: client, rate limit, retries and error mapping."""

from metering_pipeline.stripe_io.errors import (
    CallContext,
    StripeAuthenticationError,
    StripeIOError,
    StripeRejectedError,
    StripeUnavailableError,
)
from metering_pipeline.stripe_io.gateway import API_VERSION, GatewayStats, StripeGateway

__all__ = [
    "API_VERSION",
    "CallContext",
    "GatewayStats",
    "StripeAuthenticationError",
    "StripeGateway",
    "StripeIOError",
    "StripeRejectedError",
    "StripeUnavailableError",
]
