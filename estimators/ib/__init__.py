"""Inductive-bias complexity helpers (METHODS.md §3): the 2023 closed form, δ estimators, the 2024 sampled method."""
