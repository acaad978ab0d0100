"""The sandbox's state: objects by id, Stripe-style ids and lists, events, and each object's clock.

Objects are kept in their API shape; keys starting with `_` are internal and never rendered.
One re-entrant lock guards everything, so concurrent clients see Stripe's serial semantics.
`snapshot()`/`restore()` with `dumps`/`loads` turn the whole state into JSON and back,
which `metering sandbox --state` writes to a file so a restart keeps every object, as Stripe does.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path

from .errors import StripeError, no_such, param_error
from .params import integer, listing, text

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    return f"{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(24))}"


class Store:
    """All state of one sandbox instance (nothing shared between instances)."""

    def __init__(self, finalization_grace_seconds: int = 3600) -> None:
        self.lock = threading.RLock()
        self.finalization_grace_seconds = finalization_grace_seconds
        self.renderers: dict[str, Callable[[dict], dict]] = {}
        self.saver: Callable[[], None] | None = None
        self.reset()

    def changed(self) -> None:
        """Called after a change made outside a request (a test clock finishing its advance)."""
        if self.saver is not None:
            self.saver()

    def reset(self) -> None:
        with self.lock:
            self.objects: dict[str, dict] = {}
            self.events: list[dict] = []
            self.v2_events: list[dict] = []
            self.meter_events: list[dict] = []
            self.meter_event_ids: dict[str, dict] = {}
            self.sessions: dict[str, dict] = {}
            self.stream_errors: list[dict] = []
            self.invoice_counter = 0

    # -- persistence -----------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The whole state, for `dumps` (call it under the lock). v1 events are kept once (as
        objects) and listed by id; the identifier index is rebuilt from the meter events, so
        dicts shared in memory are shared again after `restore`."""
        return {
            "objects": self.objects,
            "events": [event["id"] for event in self.events],
            "v2_events": self.v2_events,
            "meter_events": self.meter_events,
            "sessions": self.sessions,
            "stream_errors": self.stream_errors,
            "invoice_counter": self.invoice_counter,
        }

    def restore(self, state: dict) -> None:
        with self.lock:
            self.reset()
            self.objects = state["objects"]
            self.events = [self.objects[event_id] for event_id in state["events"]]
            self.v2_events = state["v2_events"]
            self.meter_events = state["meter_events"]
            self.meter_event_ids = {event["identifier"]: event for event in self.meter_events}
            self.sessions = state["sessions"]
            self.stream_errors = state["stream_errors"]
            self.invoice_counter = state["invoice_counter"]

    # -- objects -------------------------------------------------------------------------------

    def add(self, prefix: str, obj: dict, *, livemode_key: bool = True) -> dict:
        """Store a new object under a fresh id (subscription items carry no `livemode`)."""
        obj["id"] = new_id(prefix)
        if livemode_key:
            obj.setdefault("livemode", False)
        self.objects[obj["id"]] = obj
        return obj

    def get(self, object_id: str, kind: str, param: str = "id") -> dict:
        obj = self.objects.get(object_id) if isinstance(object_id, str) else None
        if obj is None or obj.get("object") != kind or obj.get("_deleted"):
            raise no_such(kind.rsplit(".", 1)[-1].replace("_", " "), str(object_id), param)
        return obj

    def all(self, kind: str) -> list[dict]:
        """Live objects of one kind, oldest first."""
        return [
            obj
            for obj in self.objects.values()
            if obj.get("object") == kind and not obj.get("_deleted")
        ]

    # -- time ------------------------------------------------------------------------------------

    def clock_of(self, customer_id: str | None) -> dict | None:
        customer = self.objects.get(customer_id) if customer_id else None
        clock_id = customer.get("test_clock") if customer else None
        return self.objects.get(clock_id) if clock_id else None

    def now(self, customer_id: str | None = None) -> int:
        """The customer's test clock's frozen time if it has one, else real time."""
        clock = self.clock_of(customer_id)
        return clock["frozen_time"] if clock else int(time.time())

    # -- events ----------------------------------------------------------------------------------

    def emit(self, type_: str, obj: dict, previous: dict | None = None) -> None:
        data: dict = {"object": self.render(obj)}
        if previous:
            data["previous_attributes"] = previous
        event = {
            "id": new_id("evt"),
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": self.now(obj.get("customer") if obj["object"] != "customer" else obj["id"]),
            "data": data,
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
        self.objects[event["id"]] = event
        self.events.append(event)

    def emit_update(self, type_: str, obj: dict, before: dict) -> None:
        """An `*.updated` event; `previous_attributes` holds the top-level keys that changed."""
        after = self.render(obj)
        previous = {key: value for key, value in before.items() if after.get(key) != value}
        if previous:
            self.emit(type_, obj, previous)

    # -- rendering -------------------------------------------------------------------------------

    def render(self, obj: dict | str, expand: Iterable[str] = ()) -> dict:
        """The API shape of an object: type-specific parts filled in, `expand[]` applied."""
        if isinstance(obj, str):
            obj = self.objects[obj]
        shaped = copy.deepcopy(obj)
        renderer = self.renderers.get(shaped.get("object", ""))
        if renderer:
            shaped = renderer(shaped)
        for path in expand:
            self._expand(shaped, path.split("."))
        return _public(shaped)

    def _expand(self, node, parts: list[str]) -> None:
        if isinstance(node, list):
            for element in node:
                self._expand(element, parts)
            return
        if not isinstance(node, dict) or not parts:
            return
        head, rest = parts[0], parts[1:]
        if head == "tiers" and node.get("object") == "price" and node.get("_tiers") is not None:
            node["tiers"] = node["_tiers"]
            return
        value = node.get(head)
        if isinstance(value, str) and value in self.objects:
            value = node[head] = _keep_private(self, self.objects[value])
        if rest and value is not None:
            self._expand(value, rest)

    # -- lists -----------------------------------------------------------------------------------

    def page(self, objects: list[dict], params: dict, url: str) -> dict:
        """A Stripe list: newest first, `limit` (1..100), `starting_after`, `ending_before`."""
        limit = integer(params, "limit", default=10)
        if not 1 <= limit <= 100:
            raise param_error("limit", "Invalid limit: must be between 1 and 100.")
        newest_first = list(reversed(objects))
        ids = [obj["id"] for obj in newest_first]
        after, before = text(params, "starting_after"), text(params, "ending_before")
        if after and before:
            raise param_error("starting_after", "Use starting_after or ending_before, not both.")
        if after or before:
            cursor = after or before
            if cursor not in ids:
                raise param_error(
                    "starting_after" if after else "ending_before",
                    f"No such object to paginate from: '{cursor}'",
                )
        if after:
            window = newest_first[ids.index(after) + 1 :]
            chosen, has_more = window[:limit], len(window) > limit
        elif before:
            window = newest_first[: ids.index(before)]
            chosen, has_more = window[-limit:], len(window) > limit
        else:
            chosen, has_more = newest_first[:limit], len(newest_first) > limit
        expand = [path.removeprefix("data.") for path in listing(params, "expand")]
        return {
            "object": "list",
            "data": [self.render(obj, expand) for obj in chosen],
            "has_more": has_more,
            "url": url,
        }


def dumps(data) -> str:
    """JSON text of the state, Decimals tagged (tuples come back as lists, like any JSON array);
    one pass of the C encoder, so saving after every request stays cheap."""
    return json.dumps(data, default=_tag, separators=(",", ":"))


def loads(text: str):
    return json.loads(text, object_hook=_untag)


def _tag(value):
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    raise TypeError(f"cannot persist a {type(value).__name__} in the sandbox state")


def _untag(node: dict):
    return Decimal(node["$decimal"]) if node.keys() == {"$decimal"} else node


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that a crash at any instant leaves the previous one or the new one whole:
    a temporary file beside it, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _keep_private(store: Store, obj: dict) -> dict:
    shaped = copy.deepcopy(obj)
    renderer = store.renderers.get(shaped.get("object", ""))
    return renderer(shaped) if renderer else shaped


def _public(node):
    if isinstance(node, dict):
        return {key: _public(value) for key, value in node.items() if not key.startswith("_")}
    if isinstance(node, list):
        return [_public(value) for value in node]
    return node


def require_state(condition: bool, message: str, param: str | None = None) -> None:
    if not condition:
        raise StripeError(message, param=param)
