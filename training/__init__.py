"""SPRig training: corpus generation, pretraining, SPRig fine-tuning, evaluation.

Imports ``backend``; ``backend`` never imports ``training``.
"""
