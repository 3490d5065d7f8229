"""The ``sprig`` command line.

    sprig rig INPUT -o OUT.glb [--report R.html] [--json S.json] [--frames 0:60:2] [--models sprig|base]
    sprig eval FILE.npz [--json OUT.json] [--frames 0:48] [--protocol-frames 3] [--correspondence auto]

Each subcommand lives in ``<name>_command.py`` beside this file and registers itself with an
``add_<name>_command(subparsers)`` function that sets ``func`` (a callable taking the parsed args and
returning an exit code); add new subcommands to :data:`COMMANDS`. Input errors print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from backend.app.errors import EXIT_BAD_INPUT, CommandError
from backend.app.eval_command import add_eval_command
from backend.app.output_paths import install_termination_cleanup
from backend.app.rig_command import add_rig_command, join_dash_values
from backend.sequence import SequenceError

COMMANDS: list[Callable] = [add_rig_command, add_eval_command]


def product_version() -> str:
    """The installed package's version (``pyproject.toml``), or a note that it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sprig-blender")
    except PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sprig", description="SPRig: temporally stable rigging of mesh sequences")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"sprig {product_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sprig`` console script; returns the exit code.

    Run as a program (``argv`` None: the arguments come from ``sys.argv``), SIGTERM is made to end the
    run like Ctrl-C, removing temporary output files; called with ``argv`` (tests, other programs) the
    caller's signal handling is left alone.
    """
    parser = build_parser()
    args = parser.parse_args(join_dash_values(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if argv is None:
        install_termination_cleanup()  # SIGTERM ends the run like Ctrl-C: no temporary file left behind
    try:
        return int(args.func(args))
    except (CommandError, SequenceError) as exc:
        sys.stderr.write(f"sprig {args.command}: error: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"sprig {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
