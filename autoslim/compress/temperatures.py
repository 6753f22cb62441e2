"""The temperatures the teacher cache stores each window's log-normaliser at.

Distillation at any ``kd_temperature`` between the first and the last interpolates between
them, so this grid is also that knob's range. Torch-free: the distill operator's declaration
reads it at import, the cache (``compress/distill.py``) computes with it.
"""

TEMPERATURES = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
