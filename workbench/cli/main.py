"""The `kdw` command line: train teachers, distil, compare, export, and the demo.

One module per command group: `cli.train` (demo, teacher, distill, scratch, sweep, search, chains, resume,
cancel), `cli.results` (runs, compare, report, profile, methods, teachers), `cli.deploy` (export, publish-teacher),
`cli.serve` (app) and `cli.internal` (what the workbench starts itself). `cli.common` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys

from workbench.cli import deploy, internal, results, serve, train
from workbench.cli.common import EPILOG

TRAINING = ("teacher", "distill", "scratch", "sweep", "born-again", "takd", "search")  # take --seeds


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser, and {command: handler}."""
    p = argparse.ArgumentParser(
        prog="kdw", description="KD Workbench: knowledge distillation you can see, measure and compare.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_, **kw):
        return sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    handlers = {**train.register(add), **results.register(add), **deploy.register(add), **serve.register(add),
                **internal.register(sub)}
    return p, handlers


def main(argv=None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if args.command in TRAINING and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: the run is marked cancelled; finished epochs are kept in its metrics.jsonl",
              file=sys.stderr)
        return 130
    except Exception as e:  # every error reaches the user as one readable line
        from workbench.errors import friendly_error

        if os.environ.get("KDW_DEBUG"):
            raise
        print(f"kdw {args.command}: error: {friendly_error(e)}", file=sys.stderr)
        return 2
