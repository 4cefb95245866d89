"""Command line: `python -m service worker | api | dev [--demo] | rebuild [--clear-redis] | asyncapi`."""

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
    rebuild = sub.add_parser(
        "rebuild",
        help="rewind the worker group to the earliest offsets, so that workers rebuild Redis",
        description=(
            "Use when Redis lost its data (it came back empty, or without the AOF) or holds state to throw"
            " away. Stop every worker first: the command refuses (exit code 2) while another member of"
            " CONSUMER_GROUP holds a partition. It resets the group's committed offsets of every inbound"
            " topic to the earliest retained offset; the workers started next replay the topics into"
            " Redis. Only what the topics still retain is replayed."
        ),
    )
    rebuild.add_argument(
        "--clear-redis",
        action="store_true",
        help="also delete the service's keys (sp:*, webhook delivery marks kept) first; never FLUSHALL",
    )
    rebuild.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the group to assign partitions"
    )
    spec = sub.add_parser(
        "asyncapi", help="print the worker's AsyncAPI document (JSON), or write it to --out"
    )
    spec.add_argument("--out", help="file to write, e.g. docs/asyncapi.json")
    args = parser.parse_args(argv)

    if args.command == "worker":
        from .worker import main as worker_main

        return worker_main()
    if args.command == "api":
        from .api import main as api_main

        return api_main()
    if args.command == "asyncapi":
        from .asyncapi import main as asyncapi_main

        return asyncapi_main(args.out)
    if args.command == "rebuild":
        from .rebuild import main_rebuild

        return main_rebuild(clear_redis=args.clear_redis, join_timeout_s=args.timeout)
    from .devrun import main_dev

    return main_dev(args.demo)


if __name__ == "__main__":
    sys.exit(main())
