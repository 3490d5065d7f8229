"""The ``sprig`` command line.

    sprig rig INPUT -o OUT.glb [--report R.html] [--json S.json] [--frames 0:60:2] [--models sprig|base]
    sprig eval FILE.npz [--json OUT.json] [--frames 0:48] [--protocol-frames 3] [--correspondence auto]

Each subcommand registers itself with an ``add_<name>_command(subparsers)`` function that sets
``func`` (a callable taking the parsed args and returning an exit code); add new subcommands to
:data:`COMMANDS`. Input errors print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .sequence import SequenceError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


class CommandError(Exception):
    """A user-facing error of a subcommand: printed as one line, exit code 2."""


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, evaluate, format_report, load_eval_input, parse_frames

    try:
        config = EvalConfig(protocol_frames=args.protocol_frames, correspondence=args.correspondence)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    inp = load_eval_input(args.file)
    if args.frames is not None:
        inp = inp.subset(parse_frames(args.frames, inp.n_frames))
    result = evaluate(inp, config)
    if not args.quiet:
        sys.stdout.write(format_report(result) + "\n")
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        logger.info("wrote %s", args.json)
    return EXIT_OK


def add_eval_command(subparsers) -> None:
    """Register ``sprig eval``."""
    p = subparsers.add_parser(
        "eval", help="score per-frame rigging output (temporal stability, static accuracy, MCJD)",
        description="Score a rigging method's per-frame skeletons (and optional skinning) of one mesh sequence "
                    "with the SPRig temporal-stability protocol, the static protocol and motion-compensated "
                    "joint drift. FILE is an eval-input .npz (see docs/metrics.md).")
    p.add_argument("file", type=Path, metavar="FILE.npz", help="eval-input .npz")
    p.add_argument("--json", type=Path, metavar="OUT.json", help="also write every metric (and per-frame values) here")
    p.add_argument("--frames", metavar="START:STOP[:STEP]",
                   help="evaluate only these frames (Python slice; the first one becomes the anchor)")
    p.add_argument("--protocol-frames", type=int, default=3, metavar="N",
                   help="frames in the paper-protocol columns (anchor + N-1 following; default 3)")
    p.add_argument("--correspondence", choices=["auto", "index", "match"], default="auto",
                   help="joint correspondence to the anchor: index order when counts agree (auto), always "
                        "index, or always Hungarian matching")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=_run_eval)


def add_rig_command(subparsers) -> None:
    """Register ``sprig rig`` (defined in :mod:`backend.rig_command`)."""
    from .rig_command import add_rig_command as add

    add(subparsers)


COMMANDS: list[Callable] = [add_rig_command, add_eval_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sprig", description="SPRig: temporally stable rigging of mesh sequences")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sprig`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args))
    except (CommandError, SequenceError) as exc:
        sys.stderr.write(f"sprig {args.command}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"sprig {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    # Run the importable module's main so that subcommand modules and this one share CommandError.
    from backend.cli import main as _main

    sys.exit(_main())
