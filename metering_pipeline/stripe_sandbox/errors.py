"""Stripe's error envelope, raised anywhere in the sandbox and rendered by the server."""

from __future__ import annotations


class StripeError(Exception):
    """An API error shaped like Stripe's: HTTP status, `type`, `code`, `message`, `param`.

    `saved` says whether an idempotent replay returns it: Stripe saves results once an endpoint
    has started executing, but not for requests rejected while their parameters were checked.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        should_retry: bool | None = None,
        saved: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.should_retry = should_retry
        self.saved = saved

    def body(self) -> dict:
        error: dict = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
        if self.param:
            error["param"] = self.param
        return {"error": error}

    def headers(self) -> dict[str, str]:
        if self.should_retry is None:
            return {}
        return {"Stripe-Should-Retry": "true" if self.should_retry else "false"}


def param_error(param: str, message: str, code: str = "parameter_invalid") -> StripeError:
    """A rejected parameter: not saved for idempotent replay, as Stripe does."""
    return StripeError(message, param=param, code=code, saved=False)


def missing(param: str) -> StripeError:
    return param_error(param, f"Missing required param: {param}.", "parameter_missing")


def no_such(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        f"No such {kind}: '{object_id}'", status=404, code="resource_missing", param=param
    )
