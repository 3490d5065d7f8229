"""SPRig backend: pure Python rigging of animated mesh sequences (no bpy).

Rooms: ``backend`` never imports ``training`` or ``bpy``.
"""

__version__ = "0.1.0"
