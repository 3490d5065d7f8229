"""The ways in (floor 3 of ``backend``): thin shells over the pipeline and the core.

``cli`` (the ``sprig`` command; ``rig_command``, ``eval_command``), ``evaluate`` (the temporal-stability and
static protocols behind ``sprig eval``), ``demo`` (``make demo``), ``server`` / ``client`` (the JSON-lines
backend the Blender add-on talks to). Nothing below this floor imports it.
"""
