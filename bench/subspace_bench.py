"""Per-step time of subspace training vs direct training of the same model (docs/methods.md §4.1, Li et al. 2018).

For an MLP with D ≈ 200k (784-200-200-10, D = 199,210) and D ≈ 1M (784-400×5-10, D = 959,610), batch 128,
Adam, one seed, CPU: the median wall time of one optimisation step (forward, backward, Adam) for direct training
and for θ = θ₀ + Pθ_d with dense, sparse and fastfood P at d ∈ {100, 1000, 10000}. Li et al. report for a 1M MLP
on their GPU: direct 2.7 ms, fastfood ≈ 22 ms (≈ 8×), sparse 4.4–10.9 ms, dense out of memory beyond d = 500.

Dense P needs d·D floats: skipped when d·D > 1e9 (4 GB), i.e. D = 1M with d = 10,000 (10^10 floats) and
D = 200k with d = 10,000 (2·10^9).

    .venv/bin/python bench/subspace_bench.py --threads 1 --steps 15 > bench/.cache/subspace_bench.md
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from estimators.models import build_model, count_params
from estimators.subspace.projections import make_projection
from estimators.subspace.wrapper import DirectModel, SubspaceModel


def step_time(model, params, steps: int, batch: int = 128) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, batch, 784, generator=g)
    y = torch.randint(0, 10, (1, batch), generator=g)
    opt = torch.optim.Adam(params, lr=1e-3)
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 128, median of {args.steps} steps\n")
    print("| model | D | projection | d | step ms | direct ms | ratio | P build s |")
    print("|---|---|---|---|---|---|---|---|")
    for hidden in ([200, 200], [400] * 5):
        net = build_model({"arch": "mlp", "hidden": hidden}, (784,), 10, seed=0)
        D = count_params(net)
        direct = DirectModel([net])
        t_direct = step_time(direct, [direct.theta], args.steps)
        name = "784-" + "-".join(map(str, hidden)) + "-10"
        print(f"| {name} | {D:,} | direct | — | {t_direct:.2f} | {t_direct:.2f} | 1.00 | — |", flush=True)
        for kind in ("dense", "sparse", "fastfood"):
            for d in (100, 1000, 10000):
                if kind == "dense" and d * D > 1e9:
                    print(f"| {name} | {D:,} | dense | {d:,} | skipped: {d * D / 1e9:.0f}e9 floats | | | |", flush=True)
                    continue
                t0 = time.perf_counter()
                P = make_projection(kind, D, d, seeds=[1])
                build = time.perf_counter() - t0
                model = SubspaceModel([net], P)
                t = step_time(model, model.trainable(), args.steps)
                print(
                    f"| {name} | {D:,} | {kind} | {d:,} | {t:.2f} | {t_direct:.2f} | {t / t_direct:.2f} | {build:.1f} |",
                    flush=True,
                )
                del model, P


if __name__ == "__main__":
    main()
