"""Start the embedded default server (`taskgauge serve`) on a free loopback port with a temp DATA_DIR.

Shared by the browser tests and the CLI end-to-end tests (tests/browser/, tests/test_client_cli.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
TASKGAUGE = Path(sys.executable).with_name("taskgauge")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen
    log: Path

    @property
    def key(self) -> str:
        from taskgauge.auth import local_key_path

        p = local_key_path(self.data_dir)
        if p.is_file():
            return p.read_text().strip()
        raise RuntimeError(f"no local key file under {self.data_dir}: {sorted(os.listdir(self.data_dir))}")

    def signin_url(self) -> str:
        """The last one-time dashboard sign-in link `taskgauge serve` printed on its console."""
        links = re.findall(r"http://\S+/signin#token=\S+", self.log.read_text(errors="replace"))
        if not links:
            raise RuntimeError(f"no sign-in link in the server's output:\n{self.log.read_text()[-2000:]}")
        return links[-1]


def start(tmp: Path, *, extra_env: dict[str, str] | None = None, timeout: float = 90.0) -> Server:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKGAUGE_")}
    env.update({"TASKGAUGE_DATA_DIR": str(data_dir), "TASKGAUGE_DEVICE": "cpu", **(extra_env or {})})
    log = tmp / "server.log"
    proc = subprocess.Popen(
        [str(TASKGAUGE), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"taskgauge serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return Server(url, data_dir, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop(Server(url, data_dir, proc, log))
    raise RuntimeError(f"taskgauge serve did not become healthy in {timeout}s:\n{log.read_text()[-3000:]}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)


def digits_images(path: Path, n: int = 300, offset: int = 0) -> Path:
    """A small image dataset (N×1×8×8 in [0, 1], 10 classes) cut from examples/digits.npz."""
    import numpy as np

    with np.load(ROOT / "examples" / "digits.npz", allow_pickle=False) as d:
        X, y = d["X"][offset : offset + n], d["y"][offset : offset + n]
    X = (X / 16.0).reshape(-1, 1, 8, 8).astype("float32")
    np.savez(path, X=X, y=y.astype("int64"))
    return path
