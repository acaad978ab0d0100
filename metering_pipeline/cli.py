"""The ``metering`` command: ``demo``, ``dev``, ``sandbox``, ``seed``, ``stripe``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from metering_pipeline.settings import SettingsError

SANDBOX_STATE_FILE = "sandbox-state.json"


def sandbox_state_path() -> Path:
    """Where `metering sandbox` and `metering dev` keep the sandbox's objects by default."""
    from metering_pipeline.settings import load_settings

    return load_settings().home / SANDBOX_STATE_FILE


def _sandbox(args: argparse.Namespace) -> None:
    from metering_pipeline.stripe_sandbox.server import serve

    state = args.state or sandbox_state_path()
    if args.fresh and state.exists():
        state.unlink()
        print(f"Started fresh: removed {state}")
    serve(host=args.host, port=args.port, requests_per_second=args.rate_limit, state_path=state)


def _seed(args: argparse.Namespace) -> None:
    from metering_pipeline.sources.seed import seed_command

    seed_command(args)


def _demo(args: argparse.Namespace) -> None:
    if args.sandbox_tour:
        from metering_pipeline.stripe_io.sandbox_tour import run_sandbox_tour
        from metering_pipeline.stripe_sandbox import run_sandbox

        # Live mode's budget (100 requests/s): in-process calls take microseconds, not the
        # ~100 ms of a real round trip, so test mode's 25/s would throttle the tour's bursts.
        with run_sandbox(requests_per_second=100) as sandbox:
            run_sandbox_tour(sandbox.url)
    else:
        from metering_pipeline.demo import run_demo

        run_demo(events=args.events)


def _dev(args: argparse.Namespace) -> None:
    """``dagster dev`` on the local instance; without STRIPE_API_KEY, beside a sandbox."""
    import subprocess
    from contextlib import ExitStack

    from metering_pipeline.instance import prepare_dagster_home
    from metering_pipeline.settings import SANDBOX_DEFAULT_PORT, load_settings

    settings = load_settings()
    home = prepare_dagster_home(settings)
    command = [sys.executable, "-m", "dagster", "dev", "-m", "metering_pipeline.definitions"]
    command += ["--port", str(args.port)]
    with ExitStack() as stack:
        if settings.uses_sandbox and not _listening(SANDBOX_DEFAULT_PORT):
            from metering_pipeline.stripe_sandbox import run_sandbox

            state = sandbox_state_path()
            stack.enter_context(run_sandbox(port=SANDBOX_DEFAULT_PORT, state_path=state))
            print(
                f"Stripe sandbox on http://127.0.0.1:{SANDBOX_DEFAULT_PORT} (no STRIPE_API_KEY), "
                f"state in {state}"
            )
        print(f"Dagster instance in {home}")
        subprocess.run([*command, *args.dagster_args], check=False)


def _stripe(args: argparse.Namespace) -> None:
    """``metering stripe apply FILE`` / ``metering stripe clocks --advance-to T``."""
    from pathlib import Path

    from metering_pipeline.settings import load_settings
    from metering_pipeline.stripe_io.catalog_file import CatalogApplyError
    from metering_pipeline.stripe_setup.spec import CatalogFileError
    from metering_pipeline.tools.stripe_catalog import advance_clocks, apply_catalog

    settings = load_settings()
    try:
        if args.stripe_command == "apply":
            if not apply_catalog(settings, Path(args.file), dry_run=args.dry_run):
                _fail("the file conflicts with what Stripe holds (lines marked !); nothing applied")
        else:
            try:
                moment = datetime.fromisoformat(args.advance_to)
            except ValueError:
                _fail(f"--advance-to {args.advance_to!r} is not an ISO 8601 instant")
            advance_clocks(settings, moment)
    except (CatalogFileError, CatalogApplyError) as error:
        _fail(str(error))


def _backfill(args: argparse.Namespace) -> None:
    from metering_pipeline.settings import load_settings
    from metering_pipeline.tools.runs import RunFailedError, backfill

    try:
        backfill(load_settings(), _instant(args.start, "--from"), _instant(args.end, "--to"))
    except (RunFailedError, ValueError) as error:
        _fail(str(error))


def _reconcile(args: argparse.Namespace) -> None:
    from metering_pipeline.settings import load_settings
    from metering_pipeline.tools.runs import RunFailedError, billing_period_keys, reconcile

    settings = load_settings()
    if args.period is None:
        keys = billing_period_keys(settings)
        print("\n".join(keys) if keys else "no billing periods yet: run `metering backfill`")
        return
    try:
        finished = reconcile(settings, args.period)
    except (RunFailedError, ValueError) as error:
        _fail(str(error))
    print(finished.metadata["billing_period_reconciliation"]["reconciliation"])
    if not all(finished.checks.values()):
        _fail(
            str(
                finished.metadata.get("stripe_agrees_with_usage", {}).get("description", "")
                or "reconciliation flagged items: see the table above"
            )
        )


def _instant(text: str, option: str) -> datetime:

    try:
        return datetime.fromisoformat(text)
    except ValueError:
        _fail(f"{option} {text!r} is not an ISO 8601 instant, e.g. 2026-11-01T00:00Z")


def _fail(message: str) -> NoReturn:
    print(f"metering: {message}", file=sys.stderr)
    raise SystemExit(2)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _needs(args: argparse.Namespace) -> dict[str, bool] | None:
    """Which configured databases a command uses, so they are tried before it starts."""
    if args.command in ("dev", "backfill"):
        return {"warehouse": True, "source": True}
    if args.command == "reconcile":
        return {"warehouse": True, "source": False}
    if args.command == "demo":
        return {"warehouse": True, "source": False}  # the demo seeds a source of its own
    if args.command == "seed":
        return {"warehouse": False, "source": args.url is None}
    return None  # the sandbox and Stripe commands need no database


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as the handlers see it; ``dev`` passes unknown options to dagster dev."""
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole product once, on the embedded default")
    demo.add_argument(
        "--sandbox-tour", action="store_true", help="the Stripe sandbox alone, step by step"
    )
    demo.add_argument("--events", type=int, default=200_000, help="seeded usage events")
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser(
        "dev",
        help="open the Dagster UI on the local instance",
        epilog="Other options are passed on to dagster dev, e.g. --host 0.0.0.0.",
    )
    dev.add_argument("-p", "--port", type=int, default=3000, help="the UI's port (default 3000)")
    dev.set_defaults(handler=_dev, dagster_args=[])

    sandbox = commands.add_parser(
        "sandbox",
        help="serve the Stripe-compatible sandbox",
        description="Serve the Stripe-compatible sandbox. Like Stripe, it keeps every object "
        "across restarts: the state is loaded from --state at start and written to it "
        "(atomically) after every change. Use --fresh, or delete the file, to start empty.",
    )
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=12111)
    sandbox.add_argument(
        "--rate-limit", type=float, default=25.0, help="requests per second before 429"
    )
    sandbox.add_argument(
        "--state",
        type=Path,
        default=None,
        help=f"state file (default: $METERING_HOME/{SANDBOX_STATE_FILE}, i.e. "
        f".metering/{SANDBOX_STATE_FILE}; `metering dev` uses the same one)",
    )
    sandbox.add_argument(
        "--fresh",
        action="store_true",
        help="delete the state file first and start with an empty sandbox",
    )
    sandbox.set_defaults(handler=_sandbox)

    stripe = commands.add_parser("stripe", help="the Stripe catalog file, and test clocks")
    stripe_commands = stripe.add_subparsers(dest="stripe_command", required=True)
    apply = stripe_commands.add_parser(
        "apply",
        help="create or update the file's meters, prices, customers and subscriptions",
        description="Prints the changes, then makes them; a second apply changes nothing.",
    )
    apply.add_argument("file", help="catalog file, e.g. examples/stripe_catalog.yaml")
    apply.add_argument("--dry-run", action="store_true", help="print the changes only")
    clocks = stripe_commands.add_parser("clocks", help="move the catalog file's test clocks")
    clocks.add_argument(
        "--advance-to", required=True, help="ISO 8601 instant, e.g. 2026-12-01T00:30:00Z"
    )
    stripe.set_defaults(handler=_stripe)

    backfill = commands.add_parser(
        "backfill",
        help="run the hourly_usage job over a range of hours (one run), after a catalog sync",
        description="Hours in [--from, --to), UTC; the runs land in the local Dagster instance.",
    )
    backfill.add_argument("--from", dest="start", required=True, help="e.g. 2026-11-01T00:00Z")
    backfill.add_argument(
        "--to", dest="end", required=True, help="exclusive, e.g. 2026-11-02T00:00Z"
    )
    backfill.set_defaults(handler=_backfill)

    reconcile = commands.add_parser(
        "reconcile", help="reconcile one billing period (without PERIOD: list the periods)"
    )
    reconcile.add_argument(
        "period", nargs="?", help="e.g. 2026-11-01T00:00:00Z/2026-12-01T00:00:00Z"
    )
    reconcile.set_defaults(handler=_reconcile)

    seed = commands.add_parser("seed", help="write synthetic usage into the source")
    from metering_pipeline.sources.seed_args import add_seed_arguments

    add_seed_arguments(seed)
    seed.set_defaults(handler=_seed)

    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of a configuration error"
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "dev":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.dagster_args = unknown
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        needs = _needs(args)
        if needs is not None:
            from metering_pipeline.preflight import check_reachable
            from metering_pipeline.settings import load_settings

            # every variable checked, and the databases tried, before any work starts
            check_reachable(load_settings(), **needs)
        args.handler(args)
    except SettingsError as error:
        if args.debug:
            raise
        print(f"metering: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main(sys.argv[1:])
