"""``sprig rig``: rig one sequence (or every sequence in a folder) and write GLB / HTML / JSON outputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from backend import REPO_ROOT
from backend.app.errors import CommandError
from backend.app.output_paths import OutputPathError, atomic_write, plan_outputs, write_text_atomic
from backend.app.evaluate import EvalInput, save_eval_input
from backend.io import SUPPORTED_SUFFIXES, load_sequence
from backend.io.gltf import save_rigged_gltf
from backend.models.checkpoint import CheckpointError
from backend.rigging.result import RigResult
from backend.sequence import SequenceError


RIGGED_SUFFIX = "_rigged.glb"  # a batch writes <stem>_rigged.glb for each input
# What one sequence of a batch may fail with and the batch goes on: a bad file (SequenceError), models that
# produce NaN/Inf on it (NonFiniteOutputError, a CheckpointError), a GLB writer refusing non-finite values
# (ValueError), an output that cannot be written (OSError), a clip too large for memory.
PER_FILE_ERRORS = (SequenceError, CheckpointError, ValueError, RuntimeError, OSError, MemoryError)

SUMMARY_KEYS = ("joints", "frames", "vertices", "recon_mean", "recon_max", "recon_vs_motion", "rest_moved_max", "pjdd",
                "blrd", "gsd", "jad", "topology_flicker", "mcjd", "skin_instability_mean", "bones_without_skin",
                "bones_far_from_skin", "far_led_share", "models_loaded", "seconds")


def parse_frame_slice(text: str | None) -> slice | None:
    """``"START:END[:STEP]"`` -> slice (empty fields mean open ends); None passes through."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"--frames must look like START:END or START:END:STEP, got {text!r}")
    try:
        values = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise ValueError(f"--frames must hold integers, got {text!r}") from None
    if len(values) == 3 and values[2] is not None and values[2] <= 0:
        raise ValueError("--frames step must be positive")
    return slice(*values)


def find_sequences(folder: Path) -> list[Path]:
    """Sequences in a folder: loadable files, and sub-folders of per-frame .obj/.ply files."""
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.suffix.lower() in SUPPORTED_SUFFIXES and child.suffix.lower() not in (".obj", ".ply"):
            found.append(child)
        elif child.is_dir() and any(p.suffix.lower() in (".obj", ".ply") for p in child.iterdir()):
            found.append(child)
    if not found and any(p.suffix.lower() in (".obj", ".ply") for p in folder.iterdir()):
        return [folder]  # the folder itself is one sequence of frame files
    return found


def drop_earlier_outputs(inputs: list[Path], args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """Split a folder's sequences into ``(inputs, outputs)``: files named ``*_rigged.glb`` (what a batch
    writes) and files that are a planned output of this run (``--per-frame`` into the same folder) are
    outputs, to be overwritten atomically, not inputs; so ``sprig rig clips/ -o clips/`` can run again.
    """
    kept = [p for p in inputs if not (p.is_file() and p.name.endswith(RIGGED_SUFFIX))]
    while True:  # dropping a file drops its own planned outputs too: repeat until nothing changes
        planned = {o.resolve() for p in kept
                   for o in requested_outputs(args.output / f"{p.stem}{RIGGED_SUFFIX}", args).paths()}
        now = [p for p in kept if not (p.is_file() and p.resolve() in planned)]
        if len(now) == len(kept):
            break
        kept = now
    return kept, [p for p in inputs if p not in kept]


def one_line(path: Path, exc: BaseException) -> str:
    """``"<path>: <message>"`` on one line (the path once, even when the message starts with it)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if message.startswith(f"{path}: "):
        message = message[len(f"{path}: "):]
    return f"{path}: {message}"


def summary(result: RigResult, facing: str | None = None) -> dict:
    """The ``--json`` summary: the documented keys first, then ``facing`` (the character's facing the sides were
    named for) and ``bones`` (the bone names), then the rest of the stats."""
    stats = result.stats
    stab = stats.get("stability") or {}
    paper = stab.get("paper_3frame") or {}
    out = {key: stats.get(key) for key in SUMMARY_KEYS}
    for key in ("blrd", "gsd", "jad"):
        out[key] = paper.get(key)
    out["facing"] = facing
    out["bones"] = [str(n) for n in result.joint_names]
    out["stats"] = stats
    return out


def facing_of(args: argparse.Namespace) -> str:
    """The ``--facing`` in effect (the default for the ``--up`` axis when none was given)."""
    return args.facing or ("-y" if args.up == "z" else "+z")


def side_note(result: RigResult, facing: str) -> str:
    """One line on the rig's sides: how many ``.L`` / ``.R`` bones, for which facing (a wrong facing puts every
    ``.L`` on the character's right), or that no mirror plane gave sides."""
    names = [str(n) for n in result.joint_names]
    left, right = sum(n.endswith(".L") for n in names), sum(n.endswith(".R") for n in names)
    if not left and not right:
        return "sides: none (no mirror plane found on the anchor frame)"
    return f"sides: {left} .L / {right} .R bones, named for a character facing {facing} (--facing)"


@dataclass(frozen=True)
class RigOutputs:
    """Where one sequence's outputs go (already checked by :func:`backend.app.output_paths.plan_outputs`)."""

    glb: Path
    report: Path | None = None
    json: Path | None = None
    per_frame: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.glb, self.report, self.json, self.per_frame) if p is not None]


def requested_outputs(out_glb: Path, args: argparse.Namespace) -> RigOutputs:
    """The output files ``args`` asks for, for the sequence whose GLB is ``out_glb`` (not yet checked)."""
    return RigOutputs(glb=out_glb,
                      report=_per_input(args.report, out_glb, ".html") if args.report is not None else None,
                      json=_per_input(args.json, out_glb, ".json") if args.json is not None else None,
                      per_frame=_per_input(args.per_frame, out_glb, ".npz") if args.per_frame is not None else None)


FRAME_SLICE = re.compile(r"-?\d*(:-?\d*){0,2}")  # what --frames takes (START:END:STEP, each optional)
FACING_AXES = {"+x": (1.0, 0.0, 0.0), "-x": (-1.0, 0.0, 0.0), "+y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0),
               "+z": (0.0, 0.0, 1.0), "-z": (0.0, 0.0, -1.0)}


def left_axis(facing: str | None, up: str) -> tuple[float, float, float] | None:
    """The character's left side (``RigConfig.left_axis``) for a ``--facing`` axis and an ``--up`` axis: up x
    facing (Y up facing +Z: +X). None for the default facing (+z with Y up, -y with Z up), whose left is +X.

    Raises:
        CommandError: a facing along the up axis.
    """
    if facing is None:
        return None
    up_vector = np.array(FACING_AXES["+" + up])
    left = np.cross(up_vector, np.array(FACING_AXES[facing]))
    if not left.any():
        raise CommandError(f"--facing {facing} is along the up axis (--up {up}): give a horizontal direction")
    return tuple(float(a) for a in left)


def join_dash_values(argv: list[str]) -> list[str]:
    """``--facing -z`` as ``--facing=-z`` and ``--frames -5:`` as ``--frames=-5:``: argparse reads a value that
    starts with a dash as another option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if nxt is not None and ((argv[i] == "--facing" and nxt in FACING_AXES)
                                or (argv[i] == "--frames" and FRAME_SLICE.fullmatch(nxt) and nxt.startswith("-"))):
            out.append(f"{argv[i]}={nxt}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def gltf_axes(result: RigResult, up: str) -> RigResult:
    """``result`` turned into glTF's axes (+Y up) for the GLB: a Z-up input's rig (``--up z``) would otherwise
    lie on its back in any glTF viewer or importer. Other outputs keep the input's axes."""
    if up != "z":
        return result
    from backend.normalize import Z_UP_TO_Y_UP

    turn = np.eye(4)
    turn[:3, :3] = Z_UP_TO_Y_UP
    transforms = np.asarray(result.bone_transforms, dtype=np.float64)
    return dataclasses.replace(
        result, anchor_verts=(np.asarray(result.anchor_verts, dtype=np.float64) @ Z_UP_TO_Y_UP.T).astype(np.float32),
        joints=(np.asarray(result.joints, dtype=np.float64) @ Z_UP_TO_Y_UP.T).astype(np.float32),
        bone_transforms=(turn @ transforms @ turn.T).astype(np.float32))


RIG_DEFAULT_BONE_REACH = 0.25  # RigConfig.bone_reach's default (the pipeline is imported only once a file loads)
STILL_TOLERANCE = 1e-5  # a clip whose vertices all move less than this share of the anchor diagonal is still


def skin_notes(stats: dict) -> list[str]:
    """Lines naming the bones a user posing the rig should know about (``stats`` of a rig or refit): bones far
    from the mesh and bones that lead no vertex (:func:`backend.rigging.pipeline.skin_reach`)."""
    lines = []
    if stats.get("bones_far_from_skin"):
        from backend.rigging.pipeline import BONE_FAR_FROM_SKIN  # loaded by the rig already

        lines.append(f"{len(stats['bones_far_from_skin'])} bones lie far from the mesh (over "
                     f"{100 * BONE_FAR_FROM_SKIN:.0f}% of its size from every vertex): "
                     f"{', '.join(stats['bones_far_from_skin'])}")
    if stats.get("bones_without_skin"):
        lines.append(f"{len(stats['bones_without_skin'])} of {stats['joints']} bones lead no vertex (posing one "
                     f"moves skin only through small weights): {', '.join(stats['bones_without_skin'])}")
    return lines


def short_slice_warning(seq, frames: slice | None) -> str | None:
    """A warning when ``--frames`` asked for more frames than the clip has from its start (``0:1000`` on a
    28-frame clip rigs 28), else None."""
    if frames is None or frames.stop is None or frames.stop < 0 or (frames.start or 0) < 0:
        return None
    asked = len(range(frames.start or 0, frames.stop, frames.step or 1))
    if asked > seq.n_frames:
        return f"{seq.name}: --frames asks for {asked} frames, the clip has {seq.n_frames} there: rigging those"
    return None


def still_clip_warning(seq) -> str | None:
    """A warning when the sequence gives no motion to rig (one frame, or frames that never change), else None:
    such a clip still rigs, but its skeleton comes from the shape alone and the Action holds one pose."""
    if seq.n_frames < 2:
        return f"{seq.name}: one frame only: the skeleton comes from the shape alone and the rig has no motion"
    anchor = seq.verts[0]
    diag = float(np.linalg.norm(np.ptp(anchor, axis=0))) or 1.0
    moved = max(float(np.abs(seq.verts[k] - anchor).max()) for k in range(1, seq.n_frames))
    if moved / diag <= STILL_TOLERANCE:
        return (f"{seq.name}: the mesh does not move over its {seq.n_frames} frames: the skeleton comes from the "
                "shape alone and the rig has no motion")
    return None


# the RigConfig fields set from options, by option name (a refused value is named by its option)
CONFIG_OPTIONS = {"max_influences": "--max-influences", "detail": "--detail", "bone_reach": "--bone-reach",
                  "cpu_threads": "--threads", "device": "--device", "free_start_iters": "--free-start"}


def rig_config(args: argparse.Namespace):
    """The :class:`~backend.rigging.pipeline.RigConfig` of the options, checked.

    Raises:
        CommandError: a bad value, named by its option (checked before any input is read, once for a batch).
    """
    from backend.rigging.pipeline import RigConfig

    config = RigConfig(device=args.device, max_influences=args.max_influences, refine=args.refine,
                       skeleton=args.skeleton, detail=args.detail, articulated=args.articulated,
                       solve_rest=args.rest_solve, free_start_iters=args.free_start,
                       models=args.models, checkpoint_dir=str(args.checkpoints),
                       per_frame_predictions=args.per_frame is not None, up_axis=args.up,
                       left_axis=left_axis(args.facing, args.up), proxy=args.proxy,
                       cpu_threads=args.threads, bone_reach=args.bone_reach)
    try:
        config.validate()
    except ValueError as exc:
        message = str(exc)
        for field_name, option in CONFIG_OPTIONS.items():
            if message.startswith(field_name + " "):
                message = option + message[len(field_name):]
                break
            if f" {field_name} " in f" {message} ":
                message = f"{option}: {message}"
                break
        raise CommandError(message) from None
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CommandError("--device cuda: this torch has no usable CUDA device (use --device cpu or auto)")
    return config


def rig_one(path: Path, outputs: RigOutputs, args: argparse.Namespace, config, models=None) -> RigResult:
    """Load, rig with ``config`` (:func:`rig_config`) and write the outputs of one sequence (each file written
    atomically). ``models``: the loaded models, or a function returning them (called only once the input has
    loaded, so a bad file is refused before any model is loaded)."""
    frames = parse_frame_slice(args.frames)
    # one bar from loading to the last file written (disable=None: no bar when stderr is not a terminal, where a
    # log file would get one line per update); the rig's own stages take 5-90 %
    bar = tqdm(total=100, desc=path.stem, unit="%", leave=False, disable=True if args.quiet else None)

    def at(stage: str, percent: float) -> None:
        bar.set_postfix_str(stage)
        bar.update(max(int(percent) - bar.n, 0))

    try:
        at("loading", 0)
        seq = load_sequence(path, frames=frames)
        for warning in (short_slice_warning(seq, frames), still_clip_warning(seq)):
            if warning is not None and not args.quiet:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        from backend.rigging.pipeline import rig_sequence

        if callable(models):
            at("loading the models", 4)
            models = models()
        result = rig_sequence(seq, config, progress=lambda stage, fraction: at(stage, 5 + 85 * fraction),
                              models=models)
        at("writing the GLB", 90)
        with atomic_write(outputs.glb) as temp:
            glb = gltf_axes(result, args.up)
            save_rigged_gltf(temp, glb.anchor_verts, glb.faces, glb.joints, glb.parents, glb.joint_names,
                             glb.weights, glb.bone_transforms, fps=glb.fps, mesh_name=f"{seq.name}_rigged",
                             animation_name=seq.name)
        if outputs.report is not None:
            from backend.rigging.report import write_report
            at("writing the report", 93)
            with atomic_write(outputs.report) as temp:
                write_report(result, temp, title=seq.name, up_axis=2 if args.up == "z" else 1)
        if outputs.json is not None:
            at("writing the JSON", 98)
            write_text_atomic(outputs.json, json.dumps(summary(result, facing_of(args)), indent=1) + "\n")
        if outputs.per_frame is not None:
            at("writing the per-frame file", 98)
            with atomic_write(outputs.per_frame) as temp:
                save_eval_input(temp, per_frame_eval_input(seq, result))
        at("done", 100)
    finally:
        bar.close()
    return result


def per_frame_eval_input(seq, result: RigResult) -> EvalInput:
    """Every frame's own prediction in the ``sprig eval`` format, with the file's ground truth when it has one."""
    preds = result.frame_predictions or []
    extras = seq.extras if isinstance(seq.extras, dict) else {}
    gt_joints = extras.get("joints")
    has_gt = gt_joints is not None and np.shape(gt_joints)[0] == seq.n_frames and "parents" in extras
    gt_weights = extras.get("weights")
    return EvalInput(verts=seq.verts, faces=seq.faces, joints=[p["joints"] for p in preds],
                     parents=[p["parents"] for p in preds], weights=[p["weights"] for p in preds],
                     gt_joints=np.asarray(gt_joints) if has_gt else None,
                     gt_parents=np.asarray(extras["parents"]) if has_gt else None,
                     gt_weights=np.asarray(gt_weights) if has_gt and gt_weights is not None else None,
                     name=seq.name)


def _per_input(option: Path, out_glb: Path, suffix: str) -> Path:
    """In batch mode an output option names a folder; otherwise a file."""
    return option / (out_glb.stem + suffix) if option.suffix == "" else option


# what each output option writes: a file of that kind must carry one of these suffixes (a name with no suffix
# is a folder, where the output gets the input's name)
OUTPUT_SUFFIXES = {"-o": (".glb",), "--report": (".html", ".htm"), "--json": (".json",), "--per-frame": (".npz",)}


def output_options(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """``(option, value)`` of every output option, ``-o`` first."""
    return [("-o", args.output), ("--report", args.report), ("--json", args.json), ("--per-frame", args.per_frame)]


def check_output_names(args: argparse.Namespace) -> None:
    """Refuse an output file named for another format (``-o rig.fbx`` would hold a binary glTF).

    An output that names the input or another output is left to :func:`plan_rig_outputs`, whose message says
    that (protecting the input matters more than the name).

    Raises:
        CommandError: naming the option, the name and the suffix it needs.
    """
    given = output_options(args)
    names = [os.path.abspath(value) for _, value in given if value is not None]
    if os.path.abspath(args.input) in names or len(set(names)) < len(names):
        return
    for option, value in given:
        if value is None or value.suffix == "":
            continue
        wanted = OUTPUT_SUFFIXES[option]
        if value.suffix.lower() not in wanted:
            raise CommandError(f"{option} {value}: this output is written as {wanted[0]} (name the file "
                               f"{value.with_suffix(wanted[0]).name}, or give a folder)")


def run_rig(args: argparse.Namespace) -> int:
    try:
        parse_frame_slice(args.frames)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    check_output_names(args)
    config = rig_config(args)  # every option's value (a facing along the up axis too), before any file is read
    if not args.input.exists():
        raise CommandError(f"input not found: {args.input}")
    inputs = find_sequences(args.input) if args.input.is_dir() else [args.input]
    if not inputs:
        raise CommandError(f"no sequences found in {args.input}")
    batch = len(inputs) > 1 or inputs[0] != args.input
    if batch and args.output.suffix:
        raise CommandError("with a folder as INPUT, -o must name an output folder")
    for option, value in output_options(args)[1:]:
        if batch and value is not None and value.suffix:
            raise CommandError(f"with a folder as INPUT, {option} must name a folder (each sequence gets "
                               f"<name>_rigged{OUTPUT_SUFFIXES[option][0]} there), not the file {value}")
    if batch:
        inputs, earlier = drop_earlier_outputs(inputs, args)
        if earlier and not args.quiet:
            tqdm.write(f"not inputs (outputs of sprig rig, overwritten if planned again): "
                       f"{', '.join(p.name for p in earlier)}", file=sys.stderr)
        if not inputs:
            raise CommandError(f"no sequences found in {args.input} (only outputs of an earlier run)")
    planned = plan_rig_outputs(args, inputs, batch)

    loaded: list = []

    def models():
        """The models, loaded on the first input that loads (shared by the batch)."""
        if not loaded:
            from backend.models.inference import load_models
            try:
                loaded.append(load_models(args.checkpoints, which=args.models, device=args.device))
            except Exception as exc:  # missing/corrupt checkpoint: a readable one-liner
                raise CommandError(str(exc)) from None
        return loaded[0]

    failures: list[Path] = []
    for path in tqdm(inputs, desc="sequences", unit="seq", disable=True if args.quiet or not batch else None):
        outputs = planned[path]
        out = outputs.glb
        start = time.perf_counter()
        try:
            result = rig_one(path, outputs, args, config, models=models)
        except PER_FILE_ERRORS as exc:
            if not batch:
                raise CommandError(one_line(path, exc)) from None
            failures.append(path)  # one line now, naming the file; the batch goes on with the others
            tqdm.write(f"failed: {one_line(path, exc)}", file=sys.stderr)
            continue
        if not args.quiet:
            s = result.stats
            tqdm.write(f"{path.name}: {s['joints']} joints, {s['frames']} frames, recon mean "
                       f"{100 * s['recon_mean']:.3f}% / max {100 * s['recon_max']:.3f}% of the box diagonal"
                       + ("" if s.get("recon_vs_motion") is None else
                          f" ({100 * s['recon_vs_motion']:.1f}% of the movement)") + ", "
                       f"network PJDD(0-2) {'-' if s.get('pjdd') is None else format(s['pjdd'], '.4f')}, "
                       f"{time.perf_counter() - start:.1f} s with loading -> {out}")
            for line in [side_note(result, facing_of(args)), *skin_notes(s)]:
                tqdm.write(f"  {line}")
    if failures:
        tqdm.write(f"{len(failures)} of {len(inputs)} sequences failed: {', '.join(str(p) for p in failures)}",
                   file=sys.stderr)
        return 1
    return 0


def plan_rig_outputs(args: argparse.Namespace, inputs: list[Path], batch: bool) -> dict[Path, RigOutputs]:
    """Check every output of the run before any work (see :mod:`backend.app.output_paths`).

    A single input whose ``-o`` is an existing folder, or a name without a suffix (``-o out`` or ``-o out/``,
    made if missing), writes ``<folder>/<stem>_rigged.glb``.
    Raises:
        CommandError: an output is an input, two outputs are one file, or a folder is not writable.
    """
    requested: dict[Path, RigOutputs] = {}
    for path in inputs:
        into_folder = batch or args.output.is_dir() or args.output.suffix == ""
        out_glb = args.output / f"{path.stem}_rigged.glb" if into_folder else args.output
        requested[path] = requested_outputs(out_glb, args)
    flat = [p for outputs in requested.values() for p in outputs.paths()]
    try:
        resolved = iter(plan_outputs(flat, inputs=[args.input, *inputs], create_folders=True))
    except OutputPathError as exc:
        raise CommandError(str(exc)) from None
    return {path: RigOutputs(*(next(resolved) if p is not None else None
                               for p in (o.glb, o.report, o.json, o.per_frame)))
            for path, o in requested.items()}


def add_rig_command(subparsers) -> None:
    """Register ``sprig rig``."""
    p = subparsers.add_parser(
        "rig", help="rig an animated mesh sequence: one skeleton, weights and animation (GLB)",
        description="Rig INPUT (any format load_sequence reads, or a folder of them) and write a skinned, "
                    "animated GLB that plays the sequence back.")
    p.add_argument("input", type=Path, metavar="INPUT")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.glb",
                   help="output GLB, or a folder (a name without a suffix; made if missing) that gets "
                        "<input name>_rigged.glb; a folder when INPUT is a folder")
    p.add_argument("--report", type=Path, metavar="REPORT.html", help="self-contained HTML report")
    p.add_argument("--json", type=Path, metavar="SUMMARY.json", help="summary numbers as JSON")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--frames", metavar="START:END:STEP", help="rig only these frames (the first is the anchor)")
    p.add_argument("--max-influences", type=int, default=4)
    p.add_argument("--up", choices=["y", "z"], default="y",
                   help="the input's up axis: y (glTF, default) or z (e.g. OBJ/PLY exported from Blender Z-up)")
    p.add_argument("--facing", choices=sorted(FACING_AXES), default=None,
                   help="the way the character faces in the file: names its .L/.R sides and turns the skeleton "
                        "build to it (default: +z with --up y, as glTF; -y with --up z, as Blender's front view; "
                        "--facing -z and --facing=-z both work)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                   help="alternate transform and weight refinement (default on)")
    p.add_argument("--skeleton", choices=["motion", "network"], default="motion",
                   help="the rig's skeleton: from the clip's motion and shape with the network's as a prior "
                        "(default), or the network's anchor skeleton as is")
    p.add_argument("--detail", default="auto", metavar="auto|coarse|fine|N",
                   help="bones of the motion skeleton: auto (default), coarse, fine, or about N bones")
    p.add_argument("--articulated", action=argparse.BooleanOptionalAction, default=True,
                   help="bones rotate about their joints and stay attached (default); --no-articulated gives "
                        "every bone a free rigid motion")
    p.add_argument("--free-start", type=int, default=0, metavar="N",
                   help="with --articulated: the motion fit's first N alternations fit free rigid bones, then the "
                        "joints move to where those turn before the articulated fit goes on (e.g. 12: a quarter "
                        "lower error on the real bench clips, but joints less repeatable; default 0: articulated "
                        "from the start, joints near the built skeleton's)")
    p.add_argument("--rest-solve", action=argparse.BooleanOptionalAction, default=True,
                   help="solve the rig's rest shape with its weights and motion (default): a lower error where "
                        "bones meet, and the rig's mesh is that shape, within rest_moved_max of the first frame; "
                        "--no-rest-solve keeps the first frame as the rest shape")
    p.add_argument("--proxy", choices=["auto", "on", "off"], default="auto",
                   help="rig through a proxy of ~4000 vertices, then give every vertex its weights: auto uses it "
                        "above 8000 vertices (much faster on large meshes)")
    p.add_argument("--bone-reach", type=float, default=RIG_DEFAULT_BONE_REACH, metavar="R",
                   help=f"a vertex's weights use only bones within R of the model's size (box diagonal) of it, "
                        f"plus its two nearest and the one that moves most like it, so posing a bone moves no skin "
                        f"far from it (default {RIG_DEFAULT_BONE_REACH}; 0: any bone, a slightly lower error)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch threads of the networks on a CPU (default 1: more gain little on these small steps "
                        "and slow down badly when another program uses a core; 0: one per core)")
    p.add_argument("--models", choices=["sprig", "base", "auto"], default="auto",
                   help="SPRig fine-tuned checkpoints, the base static rigger, or auto (SPRig when present)")
    p.add_argument("--checkpoints", type=Path, default=REPO_ROOT / "checkpoints",
                   help="checkpoint folder (default: the repository's checkpoints/)")
    p.add_argument("--per-frame", type=Path, metavar="FRAMES.npz",
                   help="also write every frame's own skeleton and weights (a static rigger run frame by frame) "
                        "in the `sprig eval` input format")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=run_rig)
