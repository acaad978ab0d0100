"""The ``metering`` command: ``demo``, ``dev``, ``sandbox``, ``seed``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        from metering_pipeline.sandbox_tour import run_sandbox_tour

        run_sandbox_tour()
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


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole product once, on the embedded default")
    demo.add_argument(
        "--sandbox-tour", action="store_true", help="the Stripe sandbox alone, step by step"
    )
    demo.add_argument("--events", type=int, default=200_000, help="seeded usage events")
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser("dev", help="open the Dagster UI on the local instance")
    dev.add_argument("dagster_args", nargs="*", help="passed on to dagster dev, e.g. -p 3001")
    dev.set_defaults(handler=_dev)

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

    seed = commands.add_parser("seed", help="write synthetic usage into the source")
    from metering_pipeline.sources.seed_args import add_seed_arguments

    add_seed_arguments(seed)
    seed.set_defaults(handler=_seed)

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main(sys.argv[1:])
