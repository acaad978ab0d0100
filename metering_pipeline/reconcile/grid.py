"""Reading Stripe's figure for one item window from summaries that only know whole minutes.

Stripe's meter event summaries take ``start_time`` (inclusive) and ``end_time`` (exclusive) aligned
to minute boundaries, and are eventually consistent
(https://docs.stripe.com/api/billing/meter-event-summary/object). An item's window can start and
end off the minute: a billing period anchored at 15:23:11, a plan change at 10:15:30. The push
stamps events anywhere inside the window, a grace-hour top-up up to its last second, so rounding
both ends down drops real usage (a correct invoice then "differs"), and rounding both up counts a
neighbouring window's events twice.

The rule: every minute belongs to exactly one of a customer's windows on a meter, the earliest one
overlapping it. A window asks Stripe for the whole minutes it owns (its grid: all of the window
but a first partial minute owned by the window before it). Inside a shared minute Stripe cannot
tell whose event is whose, but the ledger knows the second of every event we sent, so for a
``sum`` meter

    figure = summary(grid) - other windows' events stamped in the grid
                           + this window's events stamped outside the grid.

Only our own, ledger-known events move between windows; every other unit is Stripe's own answer,
so an event Stripe holds that the ledger does not explain stays in exactly one window's figure:
drift is never hidden and never counted (or repaired) twice.

A ``last`` meter bills the latest event, which no subtraction can separate: its grid leaves out a
partial minute holding another window's events. If this window's own latest event sits in such a
minute, Stripe is checked on everything it can answer (its latest value over the grid must be our
latest event inside the grid) and the figure is then the ledger's latest value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from metering_pipeline.billing.modes import PushFormula

MINUTE = timedelta(minutes=1)
RULE = (
    "Stripe's meter event summaries answer over whole minutes [start, end) only; each item window "
    "is compared over the minutes it owns (a minute shared by two windows belongs to the earlier "
    "one), and our own events stamped in a shared minute are moved to their window from the "
    "ledger, which knows their second. Invoice items Stripe holds for the window (the one it "
    "creates when a price leaves an item, late usage we invoiced) count too."
)

Window = tuple[datetime, datetime]
Key = tuple[str, str, datetime]


@dataclass(frozen=True)
class Stamped:
    """One counted ledger entry (sent or pending) of a customer's meter: whose, how much, when."""

    key: Key
    value: Decimal
    at: datetime
    sequence: int = 0


@dataclass(frozen=True)
class Reading:
    """How Stripe's figure for one window is read: the grid queried and the ledger's events moved
    in or out of it (``latest``: for a ``last`` meter, the ledger's value that replaced Stripe's
    answer for a last event Stripe could not single out)."""

    grid: Window
    moved_out: Decimal = Decimal(0)
    moved_in: Decimal = Decimal(0)
    latest: Decimal | None = None

    def figure(self, summary: Decimal, formula: PushFormula) -> Decimal:
        if formula == "last":
            return self.latest if self.latest is not None else summary
        return summary - self.moved_out + self.moved_in

    def describe(self) -> str:
        text = f"summaries [{_minute(self.grid[0])}, {_minute(self.grid[1])}) UTC"
        if self.moved_out:
            text += f", minus {_number(self.moved_out)} another window stamped in a shared minute"
        if self.moved_in:
            text += f", plus {_number(self.moved_in)} this window stamped in the minute before"
        if self.latest is not None:
            text += f"; last event in a shared minute, ledger value {_number(self.latest)}"
        return text


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    floor = floor_minute(moment)
    return floor if floor == moment else floor + MINUTE


def owned_grid(window: Window, others: Sequence[Window]) -> Window:
    """The whole minutes this window owns: those it overlaps where no other window (of the same
    customer and meter) overlapping the minute started earlier. Windows that tile time get grids
    that tile minutes."""
    start, end = window
    head = floor_minute(start)
    earlier = any(o_start < start and o_end > head for o_start, o_end in others)
    grid_start = ceil_minute(start) if earlier else head
    return grid_start, max(grid_start, ceil_minute(end))


def sum_reading(
    window: Window, others: Sequence[Window], key: Key, entries: Sequence[Stamped]
) -> Reading:
    """The reading of a ``sum`` meter's window; ``entries``: every counted ledger entry of the
    customer's meter around the window, this window's and its neighbours'."""
    grid = owned_grid(window, others)
    inside = [entry for entry in entries if grid[0] <= entry.at < grid[1]]
    outside = [entry for entry in entries if not grid[0] <= entry.at < grid[1]]
    return Reading(
        grid,
        moved_out=sum((e.value for e in inside if e.key != key), Decimal(0)),
        moved_in=sum((e.value for e in outside if e.key == key), Decimal(0)),
    )


def last_grid(window: Window, key: Key, entries: Sequence[Stamped]) -> Window:
    """A ``last`` meter's grid: the window's minutes, less a partial minute at either end that
    holds another window's event (it would otherwise be taken for this window's latest)."""
    start, end = window
    foreign = [entry.at for entry in entries if entry.key != key]
    grid_start = floor_minute(start)
    if any(grid_start <= at < start for at in foreign):
        grid_start = ceil_minute(start)
    grid_end = ceil_minute(end)
    if any(end <= at < grid_end for at in foreign):
        grid_end = floor_minute(end)
    return grid_start, max(grid_start, grid_end)


def last_reading(
    window: Window,
    key: Key,
    entries: Sequence[Stamped],
    summary_over: Callable[[Window], Decimal],
) -> tuple[Reading, Decimal]:
    """The reading of a ``last`` meter's window and Stripe's answer over its grid;
    ``summary_over(grid)`` asks Stripe."""
    grid = last_grid(window, key, entries)
    summary = summary_over(grid)
    own = sorted((e for e in entries if e.key == key), key=lambda e: (e.at, e.sequence))
    if not own or grid[0] <= own[-1].at < grid[1]:
        return Reading(grid), summary
    in_grid = [e for e in own if grid[0] <= e.at < grid[1]]
    expected = in_grid[-1].value if in_grid else Decimal(0)
    return Reading(grid, latest=own[-1].value if summary == expected else None), summary


def _minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _number(value: Decimal) -> str:
    return f"{value.normalize():f}"
