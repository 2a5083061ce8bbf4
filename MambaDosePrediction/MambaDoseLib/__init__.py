"""MambaDoseLib: the core of MambaDose (no Slicer, Qt or VTK imports anywhere in this package).

The predicted dose is a model prediction for research, not a deliverable treatment plan.
"""

__version__ = "0.1.0"

RESEARCH_DISCLAIMER = (
    "Research prediction made by a machine-learning model: not a deliverable treatment plan, "
    "not for clinical use."
)
