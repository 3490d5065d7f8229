"""Where a skeleton generator's token predictions go wrong (teacher forcing on validation frames).

    python -m training.diagnose_tokens --checkpoints checkpoints --workdir runs/default

Prints, for the fixed validation frames of the pretraining stage:

* per slot (x, y, z, parent): exact-token accuracy; for coordinates the |bin error| (mean, median, 90th
  percentile), the share off by more than 20 bins, and the same error of "copy the previous joint's bin";
* the coordinate error by the joint's place in the tree (only child, first or later sibling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.models.inference import load_models  # noqa: E402


def slot_errors(logits: torch.Tensor, tokens: torch.Tensor, tokenizer) -> dict[str, dict[str, float]]:
    """Teacher-forced errors per slot. ``logits [B, L, vocab]`` from the generator, ``tokens [B, L]``."""
    target, pred = tokens[:, 1:], logits[:, :-1].argmax(-1)
    pos = torch.arange(target.shape[1])[None].expand_as(target)
    slot, live = pos % 4, target != tokenizer.pad
    previous = torch.full_like(target, -1)
    previous[:, 4:] = target[:, :-4]
    out = {}
    for name, s in (("x", 0), ("y", 1), ("z", 2)):
        mask = live & (slot == s) & (target < tokenizer.n_disc)
        err = (pred[mask] - target[mask]).abs().float()
        has_prev = mask & (pos >= 4)
        copy_err = (previous[has_prev] - target[has_prev]).abs().float()
        out[name] = dict(acc=float((err == 0).float().mean()), mean=float(err.mean()), median=float(err.median()),
                         p90=float(err.quantile(0.9)), over20=float((err > 20).float().mean()),
                         copy_previous_mean=float(copy_err.mean()))
    mask = live & (slot == 3) & (target != tokenizer.eos)
    out["parent"] = dict(acc=float((pred[mask] == target[mask]).float().mean()))
    return out


def error_by_joint_role(logits: torch.Tensor, tokens: torch.Tensor, tokenizer) -> dict[str, float]:
    """Mean coordinate |bin error| (x, y, z pooled) by the joint's place in the tree.

    ``only child``: its parent has one child (the chain goes on); ``first sibling``: the first child
    of a branching joint (the decoder must pick which branch starts); ``later sibling``: a later child
    (after a whole sibling subtree).
    """
    pred = logits[:, :-1].argmax(-1)
    errors: dict[str, list[float]] = {"only child": [], "first sibling": [], "later sibling": []}
    for b in range(tokens.shape[0]):
        _, parents = tokenizer.decode(tokens[b].tolist())
        n_children = np.bincount(parents[parents >= 0], minlength=len(parents))
        seen: set[int] = set()
        for j in range(1, len(parents)):
            p = int(parents[j])
            role = "only child" if n_children[p] == 1 else ("later sibling" if p in seen else "first sibling")
            seen.add(p)
            t = tokens[b, 1 + 4 * j: 4 + 4 * j]  # x, y, z targets of joint j
            errors[role] += (pred[b, 4 * j: 4 * j + 3] - t).abs().float().tolist()
    return {k: float(np.mean(v)) if v else float("nan") for k, v in errors.items()}


def main(argv: list[str] | None = None) -> int:
    from training.data.corpus import Corpus
    from training.presets import get_preset
    from training.pretrain import FrameSampler, collate_skeleton, validation_frames

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--which", choices=["base", "sprig"], default="base")
    parser.add_argument("--workdir", type=Path, default=Path("runs/default"), help="holds corpus/")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--frames", type=int, default=32, help="validation frames (batch of one forward pass)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    preset = get_preset(args.preset)
    generator = load_models(args.checkpoints, which=args.which, device="cpu").skeleton
    tokenizer = generator.tokenizer
    corpus = Corpus(args.workdir / "corpus")
    sampler = FrameSampler(corpus, "val", preset.pretrain, tokenizer)
    frames = validation_frames(sampler, corpus, preset.pretrain)[: args.frames]
    batch = collate_skeleton(frames, tokenizer, "cpu")
    with torch.no_grad():
        logits = generator(batch["points"], batch["normals"], batch["tokens"])
    print(f"{args.which} generator from {args.checkpoints}, {len(frames)} validation frames (teacher forcing)")
    for name, e in slot_errors(logits, batch["tokens"], tokenizer).items():
        if name == "parent":
            print(f"  parent: accuracy {e['acc']:.3f}")
        else:
            print(f"  {name}: accuracy {e['acc']:.3f}, |bin error| mean {e['mean']:.1f} median {e['median']:.0f} "
                  f"p90 {e['p90']:.0f}, > 20 bins {e['over20']:.3f}; copying the previous joint: "
                  f"mean {e['copy_previous_mean']:.1f}")
    roles = error_by_joint_role(logits, batch["tokens"], tokenizer)
    print("  mean |bin error| by tree role: " + ", ".join(f"{k} {v:.1f}" for k, v in roles.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
