"""The ``mambadose`` command: one sub-command per stage, each in its own module.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
heavy imports (torch, SimpleITK) happen inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .errors import MambaDoseError

#: sub-command -> module that implements it
COMMANDS: dict[str, str] = {
    "convert": "MambaDoseLib.commands.convert",
    "preprocess": "MambaDoseTrainingLib.commands.preprocess",
    "train": "MambaDoseTrainingLib.commands.train",
    "evaluate": "MambaDoseLib.commands.evaluate",
    "predict-openkbp": "MambaDoseLib.commands.predict_openkbp",
    "predict": "MambaDoseLib.commands.predict",
    "demo": "MambaDoseLib.commands.demo",
}


def build_parser(commands: dict[str, str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambadose",
        description="MambaDose: radiotherapy dose prediction with MambaUNetV2 "
        "(research prediction, not a deliverable plan).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None, commands: dict[str, str] = COMMANDS) -> int:
    """Run one sub-command; returns the exit code (0 success, 2 bad input, 1 other failure)."""
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except MambaDoseError as exc:
        print(f"mambadose {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mambadose {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
