"""Real short texts with topic labels: Debian's ``fortunes`` package (``apt-get install fortunes``).

One file per category under /usr/share/games/fortunes/, entries separated by a line holding ``%``. Overstrike
sequences (``c\\bc``, old terminal bold) are removed and whitespace is collapsed; empty entries are dropped.

    >>> texts, y, names = load_fortunes(["computers", "love"], per_class=100)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("FORTUNES_DIR", "/usr/share/games/fortunes"))  # FORTUNES_DIR: a copy elsewhere
TOPICS = ("computers", "love", "science", "politics", "sports")
_OVERSTRIKE = re.compile(r".\x08")


def read_category(name: str) -> list[str]:
    path = ROOT / name
    if not path.is_file():
        raise SystemExit(f"{path} not found: apt-get install fortunes")
    raw = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    for entry in raw.split("\n%\n"):
        text = " ".join(_OVERSTRIKE.sub("", entry).replace("%", " ").split())
        if text:
            out.append(text)
    return out


def load_fortunes(
    categories: Sequence[str] = TOPICS, *, per_class: int | None = None, seed: int = 0
) -> tuple[list[str], np.ndarray, list[str]]:
    """(texts, labels, category names): ``per_class`` entries drawn (seeded) from each category, or all."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(categories):
        entries = read_category(name)
        if per_class is not None and per_class < len(entries):
            pick = np.sort(rng.choice(len(entries), size=per_class, replace=False))
            entries = [entries[i] for i in pick]
        texts += entries
        labels += [c] * len(entries)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], np.asarray(labels, dtype=np.int64)[order], list(categories)
