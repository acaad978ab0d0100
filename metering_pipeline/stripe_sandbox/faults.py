"""Fault injection and request statistics: the `/_sandbox` control plane's state.

A rule matches by `path_prefix` and `method` and fires with `probability`, drawn from a seeded
random generator so a failing scenario can be replayed exactly.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict

from .errors import param_error

ACTIONS = ("status", "drop_response", "delay")


def _rule(raw: dict, index: int) -> dict:
    if not isinstance(raw, dict):
        raise param_error(f"rules[{index}]", "Each fault rule must be a JSON object.")
    action = raw.get("action")
    if action not in ACTIONS:
        raise param_error(
            f"rules[{index}].action",
            f"action must be one of {', '.join(ACTIONS)} (got {action!r}).",
        )
    probability = float(raw.get("probability", 1.0))
    if not 0 <= probability <= 1:
        raise param_error(f"rules[{index}].probability", "probability must be between 0 and 1.")
    rule = {
        "action": action,
        "path_prefix": str(raw.get("path_prefix", "/")),
        "method": str(raw["method"]).upper() if raw.get("method") else None,
        "probability": probability,
        "status": int(raw.get("status", 500)),
        "should_retry": raw.get("should_retry"),
        "seconds": float(raw.get("seconds", 0)),
        "times": raw.get("times"),
    }
    if action == "status" and not 400 <= rule["status"] <= 599:
        raise param_error(f"rules[{index}].status", "status must be an HTTP error (400-599).")
    return rule


class Faults:
    """Rules, a seeded generator, and counters; safe under concurrent requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()
        self.reset_stats()

    def set(self, rules: list, seed: int | None) -> list[dict]:
        if not isinstance(rules, list):
            raise param_error("rules", "rules must be a list of fault rules.")
        parsed = [_rule(raw, index) for index, raw in enumerate(rules)]
        with self._lock:
            self._rules = parsed
            self._random = random.Random(seed)
        return parsed

    def clear(self) -> None:
        with self._lock:
            self._rules: list[dict] = []
            self._random = random.Random()

    def pick(self, method: str, path: str) -> dict | None:
        """The first matching rule that fires for this request, if any."""
        with self._lock:
            for rule in self._rules:
                if not path.startswith(rule["path_prefix"]):
                    continue
                if rule["method"] and rule["method"] != method:
                    continue
                if rule["times"] is not None and rule["times"] <= 0:
                    continue
                if self._random.random() < rule["probability"]:
                    if rule["times"] is not None:
                        rule["times"] -= 1
                    self.injected[rule["action"]] += 1
                    return rule
        return None

    def reset_stats(self) -> None:
        with self._lock:
            self.by_path: dict[str, Counter] = defaultdict(Counter)
            self.injected: Counter = Counter()

    def count(self, method: str, path: str, status: str) -> None:
        with self._lock:
            self.by_path[f"{method} {path}"][status] += 1

    def stats(self) -> dict:
        with self._lock:
            by_status: Counter = Counter()
            for counts in self.by_path.values():
                by_status.update(counts)
            return {
                "requests": sum(by_status.values()),
                "by_path": {path: dict(counts) for path, counts in sorted(self.by_path.items())},
                "by_status": dict(by_status),
                "faults_injected": dict(self.injected),
                "rules": [dict(rule) for rule in self._rules],
            }
