"""Inductive-bias complexity (Boopathy et al. 2023/2024; docs/methods.md §3): the closed form Ĩ in bits, the δ
estimates behind it and the 2024 sampling mode. The registered estimator is :mod:`estimators.inductive_bias.estimator`."""

from estimators.inductive_bias.estimator import InductiveBiasParams, inductive_bias

__all__ = ["InductiveBiasParams", "inductive_bias"]
