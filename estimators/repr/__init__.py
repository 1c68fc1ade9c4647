"""``repr_id``: the intrinsic dimension of a model's representations (docs/methods.md §1.4)."""
