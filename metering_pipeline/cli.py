"""The ``metering`` command: ``demo``, ``sandbox``, ``seed``."""

from __future__ import annotations

import argparse
import sys


def _sandbox(args: argparse.Namespace) -> None:
    from metering_pipeline.stripe_sandbox.server import serve

    serve(host=args.host, port=args.port, requests_per_second=args.rate_limit)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole product once, on the embedded default")
    demo.add_argument(
        "--sandbox-tour", action="store_true", help="the Stripe sandbox alone, step by step"
    )
    demo.add_argument("--events", type=int, default=200_000, help="seeded usage events")
    demo.set_defaults(handler=_demo)

    sandbox = commands.add_parser("sandbox", help="serve the Stripe-compatible sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=12111)
    sandbox.add_argument(
        "--rate-limit", type=float, default=25.0, help="requests per second before 429"
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
