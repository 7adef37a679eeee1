"""docker-compose.yml checked as data (no Docker engine runs here): services, health, volumes, variables.

The services of CONTRACT section 7, each depending on the health of what it needs; web and worker
scalable and sharing the staging volume; and every variable compose uses, and every variable of
CONTRACT section 6, documented in .env.example.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("web", "worker", "webhook-worker", "cron")
# CONTRACT section 6, every variable.
CONTRACT_VARIABLES = {
    "REDIS_URL",
    "DATABASE_URL",
    "STORAGE_BACKEND",
    "LOCAL_STORAGE_ROOT",
    "S3_BUCKET",
    "S3_ENDPOINT_URL",
    "S3_REGION",
    "S3_PUBLIC_ENDPOINT_URL",
    "S3_CHECKSUM_ALGORITHM",
    "S3_REQUEST_CHECKSUM_CALCULATION",
    "S3_SSE",
    "S3_SSE_KMS_KEY_ID",
    "S3_STORAGE_CLASS",
    "PUBLIC_BASE_URL",
    "DOWNLOAD_URL_TTL",
    "UPLOAD_STAGING_DIR",
    "UPLOAD_STAGING_TTL",
    "UPLOAD_STAGING_MIN_FREE_BYTES",
    "UPLOAD_MAX_BYTES",
    "UPLOAD_ALLOWED_TYPES",
    "UPLOAD_MAX_ACTIVE_PER_USER",
    "UPLOAD_PART_SIZE",
    "UPLOAD_PART_CONCURRENCY",
    "UPLOAD_PART_RETRIES",
    "UPLOAD_PART_DELAY_MS",
    "UPLOAD_HEARTBEAT_SECONDS",
    "UPLOAD_STALE_AFTER_SECONDS",
    "UPLOAD_QUOTA_BYTES",
    "WEBHOOK_TIMEOUT_SECONDS",
    "WEBHOOK_MAX_ATTEMPTS",
    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES",
    "PROGRESS_RESYNC_SECONDS",
    "WORKERS",
    "SERVER",
    "GRAPHIQL",
    "CORS_ALLOWED_ORIGINS",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (ROOT / "docker-compose.yml").read_text()


@pytest.fixture(scope="module")
def services(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)["services"]


@pytest.fixture(scope="module")
def documented() -> set[str]:
    """Variables .env.example names, set (`NAME=...`) or shown with their default (`# NAME=...`)."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def _health_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_the_services_of_contract_section_7(services: dict[str, Any]) -> None:
    assert {"redis", "postgres", "minio", "web", "worker"} <= set(services)


def test_redis_has_a_password_and_persistence(services: dict[str, Any]) -> None:
    redis = services["redis"]
    command = _command(redis)
    assert "--requirepass ${REDIS_PASSWORD" in command
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command, "RQ's keys must never be evicted"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    for name in APP_SERVICES:
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")


def test_web_and_worker_scale_without_port_clashes(services: dict[str, Any]) -> None:
    for name in ("web", "worker"):
        assert "ports" not in services[name], f"{name} publishes a fixed port: --scale {name}=N would clash"
        assert "container_name" not in services[name]
    assert "8000" in services["proxy"]["ports"][0], "the proxy is the one published way in"
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_pass $web" in conf and "resolver 127.0.0.11" in conf, "re-resolves every web replica"
    assert "proxy_request_buffering off" in conf and "client_max_body_size 0" in conf, "streams uploads"
    assert "Upgrade $http_upgrade" in conf, "passes websockets"


def test_web_and_worker_share_the_staging_volume(services: dict[str, Any], compose_text: str) -> None:
    volumes = yaml.safe_load(compose_text)["volumes"]
    mounts = {}
    for name in ("web", "worker"):
        staging = services[name]["environment"]["UPLOAD_STAGING_DIR"]
        mounts[name] = [v.split(":")[0] for v in services[name]["volumes"] if v.split(":")[1] == staging]
    assert mounts["web"] and mounts["web"] == mounts["worker"], mounts
    assert mounts["web"][0] in volumes, "a named volume, not a directory of one host"


def test_health_checks_and_dependencies_on_health(services: dict[str, Any]) -> None:
    for name in ("redis", "postgres", "minio", "web", "worker", "proxy"):
        assert _health_test(services[name]), name
    assert "/readyz" in _health_test(services["web"]), "web is healthy once ready"
    assert "/healthz" in _health_test(services["proxy"]), "liveness through the proxy"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["bucket"]["condition"] == "service_completed_successfully"
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        for needed, how in service.get("depends_on", {}).items():
            assert needed != name, f"{name} depends on itself"
            if "healthcheck" in services[needed]:
                assert how["condition"] == "service_healthy", f"{name} starts before {needed} is healthy"


def test_the_bucket_is_created_at_start(services: dict[str, Any]) -> None:
    bucket = services["bucket"]
    # With the CORS rule the page's origin needs for direct uploads (README, Direct-to-bucket uploads).
    assert (
        _command(bucket)
        == "python manage.py s3_setup --create-bucket --cors-origin http://localhost:${HTTP_PORT:-8000}"
    )
    assert bucket["restart"] == "no"
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert bucket["environment"]["S3_ENDPOINT_URL"] == "http://minio:9000"


def test_the_processes_are_those_make_run_starts(services: dict[str, Any]) -> None:
    worker = _command(services["worker"])
    assert worker.startswith("python manage.py rqworker-pool default --num-workers ${WORKERS")
    assert "--worker-class backend.uploads.worker.UploadWorker" in worker
    webhooks = _command(services["webhook-worker"])
    assert webhooks.startswith("python manage.py rqworker-pool webhooks --num-workers ${WEBHOOK_WORKERS")
    assert "--worker-class backend.webhooks.worker.WebhookWorker" in webhooks
    assert _command(services["cron"]) == "python manage.py rqcron backend.uploads.cron"
    assert _command(services["web"]).startswith("uvicorn backend.asgi:application --host 0.0.0.0 --port 8000")
    assert _command(services["migrate"]) == "python manage.py migrate --noinput"
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert (
            environment["DATABASE_URL"].startswith("postgres://") and "@postgres:5432/" in environment["DATABASE_URL"]
        )
        assert environment["STORAGE_BACKEND"] == "s3"


def test_every_variable_compose_uses_is_documented(
    services: dict[str, Any], compose_text: str, documented: set[str]
) -> None:
    interpolated = set(re.findall(r"(?<!\$)\$\{?([A-Z][A-Z0-9_]*)", compose_text.replace("$$", "")))
    assert interpolated >= {"SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "MINIO_ROOT_PASSWORD", "WORKERS"}
    passed = {key for name in APP_SERVICES for key in services[name]["environment"]}
    assert interpolated - documented == set(), "used in docker-compose.yml, missing from .env.example"
    assert passed - documented == set(), "set for the service, missing from .env.example"


def test_env_example_covers_contract_section_6_and_the_settings(documented: set[str]) -> None:
    assert CONTRACT_VARIABLES - documented == set()
    settings = (ROOT / "backend" / "settings.py").read_text()
    read = set(re.findall(r"env(?:\.\w+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", settings))
    assert "UPLOAD_STAGING_DIR" in read
    assert read - documented == set(), "read by backend/settings.py, missing from .env.example"
