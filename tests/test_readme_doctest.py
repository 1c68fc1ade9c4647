"""README.md's "Python API" example runs as written, and the number it prints equals scikit-dimension's.

The block is extracted from README.md (the first ```python block under the "## Python API" heading) and run in a
fresh interpreter from a directory outside the source tree, so it sees ``taskgauge`` the way an installed user
does (the source tree comes in through PYTHONPATH only when the package is not installed). Its first output line
must equal ``skdim.id.MLE().fit(X).dimension_`` on the block's own X to 1e-9 relative.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import skdim

ROOT = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    block = re.search(r"```python\n(.*?)```", section.group(1), flags=re.S)
    assert block, "the '## Python API' section has no ```python block"
    return block.group(1)


def test_readme_python_api_block(tmp_path):
    code = readme_block()
    script = tmp_path / "readme_example.py"
    # run the block unchanged, then dump its X so the reference sees exactly the same data
    script.write_text(code + f"\nnp.save({str(tmp_path / 'X.npy')!r}, X)\n", encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    printed = float(lines[0])
    X = np.load(tmp_path / "X.npy")
    assert X.dtype == np.float64
    ref = skdim.id.MLE().fit(X).dimension_
    assert abs(printed - ref) <= 1e-9 * abs(ref), (printed, ref)
    assert lines[1:] == ["True"], proc.stdout
