"""The production deployment files: docker-compose.yml, Dockerfile, .dockerignore.

There is no Docker engine on the development/CI machines; `docker compose config` (or Debian's
`docker-compose config`, installed by .ci/run) validates the file without one. Besides that, the compose file is
checked here: the services (MinIO as the blob store, Flower under the `monitoring` profile), their wiring, and that every `taskgauge …` command line in it parses with the real CLI (an unknown option fails).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or Debian's standalone `docker-compose` (.ci/run installs it); neither needs
    a running engine for `config`."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(_compose_command() is None, reason="neither `docker compose` nor `docker-compose` is installed")
def test_docker_compose_config_validates():
    subprocess.run([*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], check=True)


def test_compose_services_and_wiring(compose):
    services = compose["services"]
    assert {"api", "worker", "beat", "postgres", "redis"} <= set(services)
    for name in ("api", "worker", "beat"):
        svc = services[name]
        env = svc["environment"]
        assert (
            env["TASKGAUGE_DATABASE_URL"].startswith("postgresql+psycopg://")
            and "@postgres:5432/" in env["TASKGAUGE_DATABASE_URL"]
        )
        assert env["TASKGAUGE_BROKER_URL"] == "redis://redis:6379/0"
        assert env["TASKGAUGE_DATA_DIR"] == "/data"
        assert svc["build"]["context"] == "."
        assert svc["command"][0] == "taskgauge"
        # blobs in MinIO: the bucket minio-init creates, with MinIO's own credentials; no shared filesystem
        assert env["TASKGAUGE_BLOB_URL"] == "s3://${TASKGAUGE_BUCKET:-taskgauge}/blobs"
        assert services["minio-init"]["environment"]["BUCKET"] == "${TASKGAUGE_BUCKET:-taskgauge}"
        assert env["TASKGAUGE_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["TASKGAUGE_S3_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
        assert env["TASKGAUGE_S3_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        if name != "api":
            assert not svc.get("volumes"), f"{name} must not need a shared volume"
    assert services["api"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in ("worker", "beat", "worker-gpu"):
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"  # migrations done
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy" and "healthcheck" in services["minio"]
    assert "mc mb --ignore-existing" in " ".join(init["command"]) and '"store/$$BUCKET"' in " ".join(init["command"])
    flower = services["flower"]
    assert flower["profiles"] == ["monitoring"] and "flower" in flower["command"]
    assert "--broker=redis://redis:6379/0" in flower["command"]
    assert "--migrate" in services["api"]["command"] and "--no-worker" in services["api"]["command"]
    assert {"healthcheck"} <= set(services["postgres"]) and {"healthcheck"} <= set(services["redis"])
    assert set(compose["volumes"]) >= {"pgdata", "miniodata"}
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert "gpu" in gpu["command"][gpu["command"].index("--queues") + 1].split(",")


def test_compose_commands_parse_with_the_real_cli(compose):
    from app.cli import cli

    runner = CliRunner()
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "taskgauge":
            continue
        result = runner.invoke(cli, [*cmd[1:], "--help"])
        assert result.exit_code == 0, (name, cmd, result.output)


def test_dockerfile_and_dockerignore():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_VARIANT=cpu" in text and "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    for path in ("migrations", "alembic.ini", "app", "workers", "estimators"):
        assert f"COPY {path}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and ".taskgauge" in ignored
