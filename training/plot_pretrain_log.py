"""Learning curves of one pretraining run from its ``pretrain/log.jsonl``.

    python -m training.plot_pretrain_log runs/default/pretrain/log.jsonl --out docs/generator_local_training.png

Left: validation CD-J2J of every decoding the log holds against training time (the sum of the logged seconds
per step; restarts and validation time excluded). Right: the joint-count error of the model's own decoding and
of the vote proposals. Wall-clock and step both come from the log; nothing is re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    """``(train lines, validation lines)`` of a pretraining log, each validation line with ``hours`` of training
    time before it."""
    train, val = [], []
    seconds, last_step = 0.0, 0
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        if "s_per_step" in entry:
            seconds += entry["s_per_step"] * (entry["step"] - last_step)
            last_step = entry["step"]
            train.append(entry)
        elif any(k.startswith("val_") for k in entry):
            val.append({**entry, "hours": seconds / 3600.0})
    return train, val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, val = read_log(args.log)
    if not val:
        print(f"{args.log}: no validation lines", file=sys.stderr)
        return 1
    hours = np.array([v["hours"] for v in val])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    decodings = [("val_cd_j2j", "model's decoding"), ("val_free_cd_j2j", "free"),
                 ("val_proposals_cd_j2j", "proposals"), ("val_proposal_cd_j2j", "vote proposals alone")]
    for key, label in decodings:
        if any(key in v for v in val):
            pts = [(h, v[key]) for h, v in zip(hours, val) if key in v]
            ax1.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax1.set_xlabel("training time (hours, 2 CPU cores)")
    ax1.set_ylabel("validation CD-J2J")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for key, label in (("val_joint_count_err", "model's decoding"), ("val_proposal_count_err", "vote proposals")):
        pts = [(v["step"], v[key]) for v in val if key in v]
        if pts:
            ax2.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel("joint-count error (joints per frame)")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(args.title or str(args.log))
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}: {len(val)} validations, {hours[-1]:.2f} h of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
