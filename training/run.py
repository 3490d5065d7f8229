"""Run the SPRig training pipeline, end to end or one stage at a time.

    python training/run.py                      # every stage, default preset
    python training/run.py --preset smoke       # every stage, tiny (CI)
    python training/run.py --stage data         # one stage

Each stage is a function ``run_stage(preset: str, workdir: Path, **options)`` in its own module,
resumes from its last checkpoint after a kill, and shows progress.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python training/run.py` from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Stage name -> "module:function", in pipeline order. Modules are imported lazily so that a stage
# whose dependencies are missing does not stop the others from being listed.
STAGES: dict[str, str] = {
    "data": "training.data.generate:run_stage",
    "pretrain": "training.pretrain:run_stage",
    "count-head": "training.count_head:run_stage",
    "eval-static": "training.eval_static:run_stage",
    "sprig-skeleton": "training.sprig_skeleton:run_stage",
    "sprig-skinning": "training.sprig_skinning:run_stage",
    "eval": "training.evaluate:run_stage",
}
PIPELINE = ["data", "pretrain", "count-head", "sprig-skeleton", "sprig-skinning", "eval"]
PRESETS = ("smoke", "default", "large")


def resolve_stage(name: str):
    module_name, func_name = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=list(STAGES), action="append",
                        help="stage to run (repeatable); default: the whole pipeline")
    parser.add_argument("--preset", choices=PRESETS, default="default")
    parser.add_argument("--workdir", type=Path, default=Path("runs"),
                        help="where corpora, logs and training checkpoints go (default: runs/)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stages = args.stage or PIPELINE
    for name in stages:
        start = time.time()
        logging.info("stage %s (preset %s) starting", name, args.preset)
        resolve_stage(name)(preset=args.preset, workdir=args.workdir / args.preset, device=args.device)
        logging.info("stage %s finished in %.1f s", name, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
