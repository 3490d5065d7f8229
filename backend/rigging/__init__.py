"""The rigging pipeline (floor 2 of ``backend``): from a mesh sequence to a rig.

``pipeline`` (:func:`rig_sequence` and :class:`RigConfig`), the motion fit (``fit/``), local poses for
armature keys (``pose``), the result type (``result``) and the HTML report (``report``). Imports the core
floor (``backend.sequence``, ``backend.io``, ``backend.models``, ...) and never ``backend.app``.
"""
