"""Label sharpness K_F (docs/methods.md §2): the registered ``label_sharpness`` estimator and its paper mode."""

from estimators.label_sharpness.estimator import LabelSharpnessParams, label_sharpness

__all__ = ["LabelSharpnessParams", "label_sharpness"]
