"""``python -m app …`` is the ``taskgauge`` command (used to start the embedded worker child process)."""

from app.cli import main

main()
