"""SPRig for Blender: rig an animated mesh (armature, vertex groups, action) and show a stability heatmap.

A thin extension: the rigging runs in the SPRig backend (``backend/``), either in a subprocess started
with a configured Python (Blender's bundled Python has no torch) or in-process when torch imports here.
This package only exports frames, talks to the backend and builds Blender data from its result.

Blender-facing modules import ``bpy``; :mod:`sprig_blender.convert` (pure data conversion) does not, so
it can be used and tested without Blender. That is why registration is imported lazily here.
"""

from __future__ import annotations


def register() -> None:
    from . import addon

    addon.register()


def unregister() -> None:
    from . import addon

    addon.unregister()
