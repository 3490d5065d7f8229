"""``sprig eval``: score one method's per-frame rigging output (see :mod:`backend.app.evaluate`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backend.app.errors import EXIT_OK, CommandError
from backend.app.output_paths import OutputPathError, plan_outputs, write_text_atomic

logger = logging.getLogger(__name__)


def _run_eval(args: argparse.Namespace) -> int:
    from backend.app.evaluate import EvalConfig, evaluate, format_report, load_eval_input, parse_frames

    try:
        config = EvalConfig(protocol_frames=args.protocol_frames, correspondence=args.correspondence)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    json_path = None
    if args.json is not None:  # checked before the work: never the input, and its folder writable
        try:
            [json_path] = plan_outputs([args.json], inputs=[args.file], create_folders=True)
        except OutputPathError as exc:
            raise CommandError(str(exc)) from None
    inp = load_eval_input(args.file)
    if args.frames is not None:
        inp = inp.subset(parse_frames(args.frames, inp.n_frames))
    result = evaluate(inp, config)
    if not args.quiet:
        sys.stdout.write(format_report(result) + "\n")
    if json_path is not None:
        try:
            write_text_atomic(json_path, json.dumps(result, indent=1) + "\n")
        except OSError as exc:
            raise CommandError(f"cannot write {json_path}: {exc.strerror or exc}") from None
        logger.info("wrote %s", json_path)
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
