"""Stripe's request parameters: nested form keys (`a[b][0][c]`) and typed readers."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .errors import missing, param_error

_KEY_PART = re.compile(r"\[([^\]]*)\]")


def parse_form(pairs: list[tuple[str, str]]) -> dict:
    """Turn `items[0][price]=x` pairs into nested dicts, and digit-keyed dicts into lists."""
    root: dict = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + _KEY_PART.findall("[" + rest) if rest else [head]
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":  # `expand[]=x` appends
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node):
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def text(params: dict, name: str, *, required: bool = False, default: str | None = None):
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return default
    if not isinstance(value, str):
        raise param_error(name, f"Invalid string: {name} must be a string.")
    return value


def integer(params: dict, name: str, *, required: bool = False, default: int | None = None):
    value = text(params, name, required=required)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise param_error(name, f"Invalid integer: {value!r} for {name}.") from None


def decimal(params: dict, name: str, *, required: bool = False, default: Decimal | None = None):
    value = text(params, name, required=required)
    if value is None:
        return default
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise param_error(name, f"Invalid decimal: {value!r} for {name}.") from None
    if not number.is_finite():
        raise param_error(name, f"Invalid decimal: {value!r} for {name}.")
    return number


def boolean(params: dict, name: str, default: bool | None = None) -> bool | None:
    value = text(params, name)
    if value is None:
        return default
    if value not in ("true", "false"):
        raise param_error(name, f"Invalid boolean: {value!r} for {name}; use true or false.")
    return value == "true"


def choice(
    params: dict,
    name: str,
    options: tuple[str, ...],
    default: str | None = None,
    *,
    required_as: str | None = None,
):
    """One of `options`; `required_as` names the (nested) param reported when it is missing."""
    value = text(params, name, default=default)
    if value is None and required_as:
        raise missing(required_as)
    if value is not None and value not in options:
        raise param_error(
            name, f"Invalid {name}: must be one of {', '.join(options)} (got {value!r})."
        )
    return value


def mapping(params: dict, name: str) -> dict:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise param_error(name, f"Invalid object: {name} must be a hash of keys.")
    return value


def listing(params: dict, name: str) -> list:
    value = params.get(name) or []
    if isinstance(value, dict):  # a list given with sparse indexes
        value = list(value.values())
    if not isinstance(value, list):
        raise param_error(name, f"Invalid array: {name} must be a list.")
    return value


def merge_metadata(current: dict, update: dict, param: str = "metadata") -> dict:
    """Stripe merges metadata keys; an empty value deletes a key."""
    if len(update) > 50:
        raise param_error(param, "Metadata can have up to 50 keys.")
    merged = dict(current)
    for key, value in update.items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged
