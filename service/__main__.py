"""Command line: `python -m service worker | api | dev [--demo]`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="consume Kafka, keep session state in Redis, publish summaries")
    sub.add_parser("api", help="serve the read API and the webhook intake")
    dev = sub.add_parser("dev", help="everything on one machine: embedded broker and Redis, worker, API")
    dev.add_argument("--demo", action="store_true", help="feed synthetic live meetings")
    args = parser.parse_args(argv)

    if args.command == "worker":
        from .worker import main as worker_main

        return worker_main()
    if args.command == "api":
        from .api import main as api_main

        return api_main()
    from .devrun import main_dev

    return main_dev(args.demo)


if __name__ == "__main__":
    sys.exit(main())
