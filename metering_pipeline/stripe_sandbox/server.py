"""The sandbox as an HTTP server: Starlette under uvicorn, in-process or as `metering sandbox`.

Every API request goes through the same gate, in Stripe's order: API key, rate limit,
idempotency key, then the handler under the store's lock. An outer ASGI layer counts requests
and injects the faults configured through `/_sandbox/faults`.

With a state file, every request that may have changed something (any non-GET, or a GET that
ran a due period end) is written to it before its answer leaves: what the sandbox acknowledged
survives a restart or a kill, as it does at Stripe.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import billing
from .api import ROUTES
from .errors import StripeError
from .faults import Faults
from .metering import check_session
from .params import parse_form
from .ratelimit import TokenBucket
from .store import Store, dumps, loads, write_atomically

API_VERSION = "2026-10-28.endive"
IDEMPOTENCY_TTL = 24 * 3600
KEY_PREFIXES = ("sk_test_", "rk_test_")
STATE_FORMAT = "metering-stripe-sandbox-state"
STATE_VERSION = 1
log = logging.getLogger(__name__)


class SandboxStateError(RuntimeError):
    """The state file cannot be read back; the message names the file and the way out."""


class Sandbox:
    """One sandbox instance: state, rate limit, idempotency records and faults.

    With ``state_path`` the state (objects, meter events, events, test clocks, idempotency
    records, sessions) is loaded from that file at start and rewritten after each change;
    without it the sandbox lives in memory only (the test fixture's default)."""

    def __init__(
        self,
        requests_per_second: float,
        finalization_grace_seconds: int,
        state_path: Path | None = None,
    ) -> None:
        self.store = Store(finalization_grace_seconds)
        billing.install_renderers(self.store)
        self.bucket = TokenBucket(requests_per_second)
        self.faults = Faults()
        self.idempotency: dict[str, dict] = {}
        self.in_flight: set[tuple[str, str]] = set()
        self.keys_in_flight: set[str] = set()
        self.guard = threading.Lock()
        self.state_path = state_path
        if state_path is not None:
            self.store.saver = self.save
            if state_path.exists():
                self._load(state_path)

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear()
        self.faults.reset_stats()
        with self.guard:
            self.idempotency.clear()
        self.save()

    def save(self) -> None:
        """Write the whole state to the state file, atomically (no-op without one)."""
        if self.state_path is None:
            return
        with self.store.lock, self.guard:
            text = dumps(
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "store": self.store.snapshot(),
                    "idempotency": self.idempotency,
                }
            )
            # still under the lock: saves land in order, and never share the temporary file
            write_atomically(self.state_path, text)

    def _load(self, path: Path) -> None:
        try:
            data = loads(path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
                raise ValueError(
                    f"format {data.get('format')!r} version {data.get('version')!r}, expected "
                    f"{STATE_FORMAT!r} version {STATE_VERSION}"
                )
            self.store.restore(data["store"])
            self.idempotency = data["idempotency"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SandboxStateError(
                f"The sandbox state file {path} cannot be loaded ({type(error).__name__}: "
                f"{error}). Move it away to keep it, or start with `metering sandbox --fresh` "
                "to begin with an empty sandbox."
            ) from None
        # a clock stopped mid-advance finishes it, as Stripe's would have meanwhile
        for clock in self.store.all("test_helpers.test_clock"):
            if clock["status"] == "advancing":
                target = clock["status_details"]["advancing"]["target_frozen_time"]
                billing.finish_advance(self.store, clock, target)
                self.save()


def _error(error: StripeError, version: str) -> JSONResponse:
    return JSONResponse(
        error.body(),
        status_code=error.status,
        headers={**error.headers(), "Stripe-Version": version, "Request-Id": _request_id()},
    )


def _request_id() -> str:
    return f"req_{secrets.token_hex(7)}"


def _check_key(request: Request, sandbox: Sandbox, path: str) -> str | None:
    """Stripe's 401s; never echoes the key. Returns the bearer token."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "basic":
        token = base64.b64decode(token.strip() or b"").decode(errors="replace").split(":")[0]
    token = token.strip()
    if not token:
        raise StripeError(
            "You did not provide an API key. Provide it in the Authorization header, using "
            "Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            status=401,
        )
    if path == "/v2/billing/meter_event_stream":
        with sandbox.store.lock:
            check_session(sandbox.store, token)
        return token
    if not token.startswith(KEY_PREFIXES):
        raise StripeError(
            "Invalid API Key provided. The sandbox accepts test-mode keys: a secret key starting "
            "with sk_test_ or a restricted key starting with rk_test_.",
            status=401,
        )
    return token


async def _params(request: Request) -> dict:
    if request.url.path.startswith("/v2/"):
        raw = await request.body()
        if request.method == "GET" or not raw:
            return parse_form(list(request.query_params.multi_items()))
        try:
            body = json.loads(raw)
        except ValueError:
            raise StripeError("The request body is not valid JSON.", saved=False) from None
        return body if isinstance(body, dict) else {}
    pairs = list(request.query_params.multi_items())
    if request.method != "GET":
        # Stripe's v1 bodies are application/x-www-form-urlencoded, never multipart.
        pairs += parse_qsl((await request.body()).decode(), keep_blank_values=True)
    return parse_form(pairs)


def _fingerprint(request: Request, params: dict) -> str:
    canonical = json.dumps([request.method, request.url.path, params], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _concurrency_key(path: str, params: dict) -> tuple[str, str] | None:
    """Stripe takes one meter-event call at a time per customer and meter."""
    if path != "/v1/billing/meter_events":
        return None
    payload = params.get("payload") if isinstance(params.get("payload"), dict) else {}
    return (str(params.get("event_name")), str(payload.get("stripe_customer_id")))


def _endpoint(sandbox: Sandbox, handler):
    async def run(request: Request) -> Response:
        version = request.headers.get("stripe-version", API_VERSION)
        path = request.url.path
        try:
            _check_key(request, sandbox, path)
            if not sandbox.bucket.take():
                raise StripeError(
                    "Request rate limit exceeded. You can make a limited number of requests per "
                    "second in test mode; slow down and retry with exponential backoff.",
                    status=429,
                    code="rate_limit",
                )
            params = await _params(request)
        except StripeError as error:
            return _error(error, version)
        key = request.headers.get("idempotency-key") if request.method == "POST" else None
        fingerprint = _fingerprint(request, params)
        if key:
            replay = _replay(sandbox, key, fingerprint, version)
            if replay is not None:
                return replay
        slot = _concurrency_key(path, params)
        with sandbox.guard:
            key_busy = key in sandbox.keys_in_flight
            busy = slot in sandbox.in_flight
            if not (key_busy or busy):
                if key:
                    sandbox.keys_in_flight.add(key)
                if slot:
                    sandbox.in_flight.add(slot)
        if key_busy:
            return _error(
                StripeError(
                    "There is currently another in-progress request using this idempotency key "
                    f"('{key}'); retry after it completes.",
                    status=409,
                    type="idempotency_error",
                ),
                version,
            )
        if busy:
            return _error(
                StripeError(
                    "Another meter event call for this customer and meter is in progress; "
                    "Stripe takes one at a time. Retry shortly.",
                    status=429,
                    code="lock_timeout",
                    should_retry=True,
                ),
                version,
            )
        try:
            delay = request.scope.get("sandbox_delay")
            if delay:
                await asyncio.sleep(delay)
            status, body, headers, saved, changed = await run_in_threadpool(
                _execute, sandbox, handler, params, request.path_params
            )
            if key and saved:
                with sandbox.guard:
                    sandbox.idempotency[key] = {
                        "fingerprint": fingerprint,
                        "status": status,
                        "body": body,
                        "headers": headers,
                        "at": time.time(),
                    }
            if changed or request.method != "GET":
                await run_in_threadpool(sandbox.save)
        finally:
            with sandbox.guard:
                sandbox.in_flight.discard(slot)
                sandbox.keys_in_flight.discard(key)
        response_headers = {**headers, "Stripe-Version": version, "Request-Id": _request_id()}
        if key:
            response_headers["Idempotency-Key"] = key
        return JSONResponse(body, status_code=status, headers=response_headers)

    return run


def _replay(sandbox: Sandbox, key: str, fingerprint: str, version: str) -> Response | None:
    with sandbox.guard:
        now = time.time()
        for stale in [k for k, v in sandbox.idempotency.items() if now - v["at"] > IDEMPOTENCY_TTL]:
            del sandbox.idempotency[stale]
        record = sandbox.idempotency.get(key)
    if record is None:
        return None
    if record["fingerprint"] != fingerprint:
        return _error(
            StripeError(
                f"Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
                status=400,
            ),
            version,
        )
    headers = {**record["headers"], "Idempotent-Replayed": "true", "Idempotency-Key": key}
    headers.update({"Stripe-Version": version, "Request-Id": _request_id()})
    return JSONResponse(record["body"], status_code=record["status"], headers=headers)


def _execute(sandbox: Sandbox, handler, params: dict, path_params: dict):
    """Run a handler under the store's lock; returns (status, body, headers, saved, changed),
    ``changed`` when a period end or another scheduled action ran (it emits events)."""
    store = sandbox.store
    with store.lock:
        events_before = len(store.events)
        try:
            billing.run_due(store, None, int(time.time()))
            result = handler(store, params, **path_params)
            if not (
                result.get("object") in ("list", "search_result")
                or "deleted" in result
                or "next_page_url" in result
            ):
                expand = params.get("expand") if isinstance(params.get("expand"), list) else []
                result = store.render(result, expand)
            return 200, result, {}, True, len(store.events) != events_before
        except StripeError as error:
            changed = len(store.events) != events_before
            return error.status, error.body(), error.headers(), error.saved, changed
        except Exception:
            log.error("sandbox handler failed:\n%s", traceback.format_exc())
            error = StripeError(
                "The Stripe sandbox hit an internal error; this is a sandbox bug.",
                status=500,
                type="api_error",
            )
            return 500, error.body(), {}, True, True


def _control_routes(sandbox: Sandbox) -> list[Route]:
    async def reset(request: Request) -> Response:
        await run_in_threadpool(sandbox.reset)
        return JSONResponse({"reset": True})

    async def set_faults(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
            rules = sandbox.faults.set(body.get("rules", []), body.get("seed"))
        except StripeError as error:
            return _error(error, API_VERSION)
        except (ValueError, TypeError, AttributeError) as error:
            return JSONResponse({"error": {"message": f"Bad fault rules: {error}"}}, 400)
        return JSONResponse({"rules": rules})

    async def clear_faults(request: Request) -> Response:
        sandbox.faults.clear()
        return JSONResponse({"rules": []})

    async def stats(request: Request) -> Response:
        with sandbox.store.lock:
            stream_errors = list(sandbox.store.stream_errors)
        return JSONResponse({**sandbox.faults.stats(), "meter_event_stream_errors": stream_errors})

    return [
        Route("/_sandbox/reset", reset, methods=["POST"]),
        Route("/_sandbox/faults", set_faults, methods=["POST"]),
        Route("/_sandbox/faults", clear_faults, methods=["DELETE"]),
        Route("/_sandbox/stats", stats, methods=["GET"]),
    ]


class FaultLayer:
    """Outer ASGI layer: counts each API request by path and status, and injects faults."""

    def __init__(self, app, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        faults = self.sandbox.faults
        rule = faults.pick(method, path)
        status_seen: list[int] = []

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(message["status"])
            await send(message)

        if rule and rule["action"] == "status":
            error = StripeError(
                f"Injected fault: the sandbox answered {rule['status']} on purpose.",
                status=rule["status"],
                type="api_error" if rule["status"] >= 500 else "invalid_request_error",
                code="rate_limit" if rule["status"] == 429 else None,
                should_retry=rule["should_retry"],
            )
            await _error(error, API_VERSION)(scope, receive, counting_send)
        elif rule and rule["action"] == "drop_response":
            await self.app(scope, receive, _swallow(status_seen))
            _close_connection(send)
            faults.count(method, path, "dropped")
            return
        else:
            if rule and rule["action"] == "delay":
                scope["sandbox_delay"] = rule["seconds"]
            await self.app(scope, receive, counting_send)
        faults.count(method, path, str(status_seen[0]) if status_seen else "none")


def _swallow(status_seen: list[int]):
    async def send(message) -> None:
        if message["type"] == "http.response.start":
            status_seen.append(message["status"])

    return send


def _close_connection(send) -> None:
    """Close the TCP connection without answering: the request was processed, the client never
    learns it (the case that turns a naive retry into a double count)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("drop_response needs uvicorn's HTTP protocol (its transport)")
    transport.close()


def build_app(
    requests_per_second: float = 25.0,
    finalization_grace_seconds: int = 3600,
    state_path: Path | None = None,
) -> tuple[FaultLayer, Sandbox]:
    sandbox = Sandbox(requests_per_second, finalization_grace_seconds, state_path)
    routes = _control_routes(sandbox) + [
        Route(path, _endpoint(sandbox, handler), methods=[method])
        for method, path, handler in ROUTES
    ]

    async def not_found(request: Request, exc) -> Response:
        return JSONResponse(
            {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"Unrecognized request URL ({request.method}: {request.url.path}). "
                    "The sandbox implements the routes listed in "
                    "metering_pipeline/stripe_sandbox/README.md.",
                }
            },
            status_code=404,
        )

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    return FaultLayer(app, sandbox), sandbox


@dataclass
class SandboxControl:
    """Helpers for the `/_sandbox` control API."""

    url: str

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        response = httpx.request(method, f"{self.url}/_sandbox/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> dict:
        return self._call("POST", "reset")

    def set_faults(self, rules: list[dict], seed: int | None = None) -> dict:
        return self._call("POST", "faults", {"rules": rules, "seed": seed})

    def clear_faults(self) -> dict:
        return self._call("DELETE", "faults")

    def stats(self) -> dict:
        return self._call("GET", "stats")


@dataclass
class SandboxHandle:
    url: str
    control: SandboxControl
    sandbox: Sandbox


@contextmanager
def run_sandbox(
    requests_per_second: float = 25.0,
    finalization_grace_seconds: int = 3600,
    port: int = 0,
    state_path: Path | None = None,
) -> Iterator[SandboxHandle]:
    """A sandbox on a loopback port (a free one by default), served from a thread: fresh and
    in memory, or loaded from and saved to ``state_path``."""
    app, sandbox = build_app(requests_per_second, finalization_grace_seconds, state_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Stripe sandbox did not start within 10 seconds")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        yield SandboxHandle(url=url, control=SandboxControl(url), sandbox=sandbox)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 12111,
    requests_per_second: float = 25.0,
    state_path: Path | None = None,
) -> None:
    """`metering sandbox`: serve until interrupted, keeping the state in ``state_path``."""
    app, sandbox = build_app(requests_per_second, state_path=state_path)
    print(f"Stripe sandbox on http://{host}:{port} (any sk_test_/rk_test_ key; control: /_sandbox)")
    if state_path is not None:
        kept = len(sandbox.store.objects)
        print(f"State in {state_path} ({kept} objects loaded; saved after every change)")
    uvicorn.run(app, host=host, port=port, log_level="info")
