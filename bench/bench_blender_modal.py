"""Rig Sequence's interactive run on a production-size mesh: how often the progress Blender shows changes,
and how long Esc takes to stop it (bpy wheel, headless, the shipped checkpoints, the backend server in its
subprocess).

The bpy module runs no event loop, so this script stands in for Blender's window manager: it invokes the
operator as a click on the button does (``INVOKE_DEFAULT`` in the window's 3D view), then hands the running
operator's ``modal`` a ``TIMER`` event every 0.1 s (the interval of the timer the operator adds) and, to stop
it, an ``ESC`` press. Everything between is the add-on's own code: the frame export in slices, the backend
server rigging in its subprocess, the job polling, the progress bar value and the status text. The status
text (which carries the percentage) is recorded as the operator sets it (``_status`` is wrapped, not
replaced). Not measured: Blender drawing it.

Scene: a UV sphere of about ``--verts`` vertices with a Wave modifier (the moving mesh of issue 19), frames
1..``--frames``. Printed: for a full run, the seconds per phase, the longest time the shown text stayed the
same (target <= 1 s), and the result; then, for each phase in ``--cancel-in``, the seconds from Esc to the
operator's ``CANCELLED`` (target <= 1 s) and whether anything was left in the file.

    python bench/bench_blender_modal.py [--verts 200000] [--frames 24] [--cancel-in export skeleton fit]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TICK_S = 0.1  # the operator's event timer interval


def wave_sphere(n_verts: int, n_frames: int):
    """A UV sphere of about ``n_verts`` vertices with a Wave modifier, selected and active; frames 1..n."""
    import bpy

    rings = max(8, int(round((n_verts / 2) ** 0.5)))
    bpy.ops.mesh.primitive_uv_sphere_add(segments=2 * rings, ring_count=rings, radius=1.0)
    obj = bpy.context.active_object
    obj.name = "wave_sphere"
    wave = obj.modifiers.new("Wave", "WAVE")
    wave.height, wave.width, wave.speed = 0.15, 0.8, 0.12
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, n_frames
    return obj


class Recorder:
    """Timestamps of every status text and progress value the operator sets."""

    def __init__(self, operator_class):
        self.events: list[tuple[float, str]] = []
        self._class = operator_class
        self._status = operator_class._status
        recorder = self

        def status(op, context, text):
            if text is not None:
                recorder.events.append((time.monotonic(), text))
            return recorder._status(op, context, text)

        operator_class._status = status

    def restore(self) -> None:
        self._class._status = self._status

    def silences(self, start: float, end: float) -> list[tuple[float, str]]:
        """How long each shown text stayed between ``start`` and ``end``, longest first, with the text."""
        times = [start]
        texts = ["(before the first text)"]
        for t, text in self.events:
            if start <= t <= end and text != texts[-1]:
                times.append(t)
                texts.append(text)
        times.append(end)
        return sorted(((times[i + 1] - times[i], texts[i]) for i in range(len(times) - 1)), reverse=True)


def run_once(cancel_at: str | None, rng: random.Random, timeout: float = 900.0) -> dict:
    """One interactive Rig Sequence; with ``cancel_at`` (the start of a phase's text: ``export``, a backend stage or
    ``building the rig: ...``), Esc a random 0-0.5 s after that phase starts. Returns timings and the outcome."""
    import bpy
    from test_blender_scenes import ModalEvent, invoke_rig_sequence, window_override

    from sprig_blender.operators import _Active

    started = time.monotonic()
    op = invoke_rig_sequence()
    runtime = bpy.context.window_manager.sprig_runtime
    phase_start: dict[str, float] = {"export": started}
    esc_due = esc_sent = None
    result = None
    while time.monotonic() - started < timeout:
        time.sleep(TICK_S)
        phase = "export" if op._job is None else (runtime.stage or "starting")
        phase_start.setdefault(phase, time.monotonic())
        if cancel_at is not None and esc_due is None and phase.startswith(cancel_at):
            esc_due = time.monotonic() + rng.uniform(0.0, 0.5)
        with window_override():
            if esc_due is not None and esc_sent is None and time.monotonic() >= esc_due:
                esc_sent = time.monotonic()
                result = op.modal(bpy.context, ModalEvent("ESC", "PRESS"))
            else:
                result = op.modal(bpy.context, ModalEvent("TIMER"))
        if result != {"RUNNING_MODAL"}:
            break
    ended = time.monotonic()
    if _Active.job is not None or _Active.export is not None:
        raise RuntimeError(f"the operator ended ({result}) with a job or an export still registered")
    return dict(result=sorted(result or []), started=started, ended=ended, phase_start=phase_start,
                esc_sent=esc_sent, cancel_seconds=None if esc_sent is None else ended - esc_sent,
                job_state=getattr(op._job, "state", "no job"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verts", type=int, default=200_000)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--checkpoints", default=str(ROOT / "checkpoints"))
    parser.add_argument("--cancel-in", nargs="*",
                        default=["export", "skeleton", "fit", "weights", "building the rig: vertex groups"],
                        help="phases to press Esc in: export, a backend stage, or a step of building the rig (the "
                             "start of a phase's text is enough: 'build' is the first step of building the rig)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import bpy
    from test_blender_scenes import data_counts, disable_addon, reset_scene, set_backend

    from sprig_blender import builder, operators, runner

    rng = random.Random(args.seed)
    reset_scene()
    set_backend("SUBPROCESS", checkpoints=args.checkpoints)
    obj = wave_sphere(args.verts, args.frames)
    print(f"{len(obj.data.vertices)} vertices x {args.frames} frames, the shipped checkpoints, backend subprocess",
          flush=True)
    recorder = Recorder(operators.SPRIG_OT_rig_sequence)
    try:
        # the full run
        run = run_once(None, rng)
        phases = sorted(run["phase_start"].items(), key=lambda kv: kv[1])
        bounds = [t for _, t in phases] + [run["ended"]]
        print(f"full run: {run['ended'] - run['started']:.1f} s, result {run['result']}, job {run['job_state']}")
        for (name, t0), t1 in zip(phases, bounds[1:]):
            print(f"  {name:10s} {t1 - t0:6.1f} s")
        silences = recorder.silences(run["started"], run["ended"])
        long = [(seconds, text) for seconds, text in silences if seconds > 1.0]
        print(f"  the shown text changed {len(silences) - 1} times; longest time it stayed the same: "
              f"{silences[0][0]:.2f} s on {silences[0][1]!r} (target <= 1 s); texts shown over 1 s: {len(long)}")
        for seconds, text in long:
            print(f"    {seconds:5.2f} s  {text!r}")
        rigged = [o.name for o in bpy.data.objects if o.name != obj.name]
        print(f"  objects added: {rigged}")
        # cancels: remove the rig, show and select the original again, then Esc in each phase
        for name in list(rigged):
            bpy.data.objects.remove(bpy.data.objects[name])
        for collection in [c for c in bpy.data.collections if c.name.endswith("_SPRig")]:
            bpy.data.collections.remove(collection)
        builder.set_source_visible(obj, True)
        obj.select_set(True)
        bpy.context.view_layer.objects.active = obj
        for phase in args.cancel_in:
            before = data_counts()
            run = run_once(phase, rng)
            left = {k: v - before[k] for k, v in data_counts().items() if v != before[k]}
            if run["esc_sent"] is None:
                print(f"cancel in {phase:9s}: the phase never came (result {run['result']})")
                continue
            print(f"cancel in {phase:9s}: {run['cancel_seconds']:.2f} s from Esc to {run['result']} "
                  f"(target <= 1 s), job {run['job_state']}, data-blocks left: {left or 'none'}", flush=True)
    finally:
        recorder.restore()
        runner.discard_backend()
        disable_addon()


if __name__ == "__main__":
    main()
