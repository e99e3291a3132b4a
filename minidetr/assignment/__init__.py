"""Optimal one-to-one assignment: our own shortest augmenting path solver.

``jonker_volgenant`` holds the algorithm (plain Python that Numba compiles),
``drivers`` the compiled loops that orient, check and batch problems for it,
``solver`` the SciPy-compatible functions built on them, ``trace`` a step-by-step
record of the augmenting paths for the lesson.
"""

from minidetr.assignment.solver import (
    linear_sum_assignment,
    linear_sum_assignment_batch,
    linear_sum_assignment_stacked,
)
from minidetr.assignment.trace import AugmentStep, trace_assignment

__all__ = [
    "AugmentStep",
    "linear_sum_assignment",
    "linear_sum_assignment_batch",
    "linear_sum_assignment_stacked",
    "trace_assignment",
]
