"""SPRig backend: pure Python rigging of animated mesh sequences (no bpy).

Three floors, imports only downward (``tests/test_layers.py`` checks it; ``backend/README.md`` lists them):

1. core data and geometry: this folder's modules with ``io/``, ``metrics/`` and ``models/``;
2. ``rigging/``: the pipeline from a sequence to a rig;
3. ``app/``: the CLI, the demo, ``sprig eval``, the server and its client.

``backend`` never imports ``training`` or ``bpy``.
"""

from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The source checkout holding ``backend/`` (its ``checkpoints/`` and ``samples/`` are the shipped ones)."""
