"""``repr_id``: the intrinsic dimension of a model's representations (METHODS §1.4)."""
