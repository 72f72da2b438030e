"""The `kdw` command line: train teachers, distil, compare, export, and the demo.

One module per command group: `cli.train` (demo, teacher, distill, scratch, sweep, search, chains, resume,
cancel), `cli.results` (runs, compare, report, profile, methods, teachers), `cli.deploy` (export, compress, publish-teacher),
`cli.serve` (app) and `cli.internal` (what the workbench starts itself). `cli.common` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys

from workbench.cli import deploy, internal, results, serve, train
from workbench.cli.common import EPILOG
from workbench.jobs.queue import check_workers
from workbench.logs import configure_cli

TRAINING = ("teacher", "distill", "scratch", "sweep", "born-again", "takd", "search")  # take --seeds


def active_command(argv) -> str | None:
    """The command `argv` names (its first word), or None (`kdw`, `kdw --help`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return argv[0] if argv and not argv[0].startswith("-") else None


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser, and {command: handler}. Only `command`'s own options are described (the training options need
    the methods' and the config's defaults, which load torch): `kdw --help`, `kdw runs` and `kdw compare` stay
    torch-free, and every other command's parser is a name and a line of help until it is the one asked for."""
    p = argparse.ArgumentParser(
        prog="kdw", description="KD Workbench: knowledge distillation you can see, measure and compare.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_, **kw):
        parser = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        parser.kdw_outline = name != command  # common.add_train_args leaves such a parser's options out
        return parser

    handlers = {**train.register(add), **results.register(add), **deploy.register(add), **serve.register(add),
                **internal.register(sub)}
    return p, handlers


def explicit_options(argv) -> set[str]:
    """The options given on the command line (not defaulted): a flag given wins over the --config file."""
    parser, _ = build_parser(active_command(argv))
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        p._defaults.clear()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
            elif action.dest != "help":
                action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(sys.argv[1:] if argv is None else argv))) - {"command"}


def print_config(args) -> int:
    """`--print-config`: the config the command would train (its first seed; a distillation's scratch twin and
    further seeds follow from it), as JSON that --config reads back."""
    import json

    from workbench.cli.common import train_config

    kind = {"teacher": "teacher", "scratch": "scratch"}.get(args.command, "kd")
    print(json.dumps(train_config(args, kind, args.seed).to_dict(), indent=2, sort_keys=True))
    return 0


def main(argv=None) -> int:
    configure_cli()
    parser, handlers = build_parser(active_command(argv))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if args.command in TRAINING and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    try:
        if getattr(args, "workers", None) is not None:  # in the foreground too, not only with --background
            check_workers(args.workers)
        if getattr(args, "config", None):
            args._explicit = explicit_options(argv)
        if getattr(args, "print_config", False):
            return print_config(args)
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
