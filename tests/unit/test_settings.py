"""Settings come from the environment through backend.settings (CONTRACT section 6).

Each case imports the settings module in a fresh interpreter with exactly the environment given,
so what is checked is what a real process would read at start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

READ_SETTINGS = """
import json
from pathlib import Path
import backend.settings as s
names = [n for n in dir(s) if n.isupper()]
def plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
print(json.dumps({n: plain(getattr(s, n)) for n in names}))
"""


def run_settings(**env: str) -> subprocess.CompletedProcess[str]:
    # Only what a bare process has: none of the test session's overrides leak in.
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "SYSTEMROOT") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-c", READ_SETTINGS], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60
    )


def read_settings(**env: str) -> dict[str, Any]:
    done = run_settings(**env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_debug_false_without_secret_key_refuses_to_start() -> None:
    done = run_settings(DEBUG="false", ALLOWED_HOSTS="uploads.example.com")
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and "SECRET_KEY" in done.stderr


def test_debug_false_with_the_development_secret_refuses_to_start() -> None:
    dev_secret = read_settings()["SECRET_KEY"]
    done = run_settings(DEBUG="false", ALLOWED_HOSTS="uploads.example.com", SECRET_KEY=dev_secret)
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr


def test_debug_false_without_allowed_hosts_refuses_to_start() -> None:
    done = run_settings(DEBUG="false", SECRET_KEY="a-real-secret-" + "x" * 40)
    assert done.returncode != 0
    assert "ALLOWED_HOSTS" in done.stderr


def test_debug_false_with_a_secret_and_hosts_starts_without_graphiql() -> None:
    values = read_settings(DEBUG="false", SECRET_KEY="a-real-secret-" + "x" * 40, ALLOWED_HOSTS="a.example,b.example")
    assert values["DEBUG"] is False
    assert values["ALLOWED_HOSTS"] == ["a.example", "b.example"]
    assert values["GRAPHIQL"] is False


def test_contract_defaults() -> None:
    values = read_settings()
    root = ROOT / "var"
    assert values["DEBUG"] is True
    assert values["GRAPHIQL"] is True
    assert values["SECRET_KEY"]
    assert values["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert values["DATABASES"]["default"]["NAME"] == str(root / "db.sqlite3")
    assert "journal_mode=WAL" in values["DATABASES"]["default"]["OPTIONS"]["init_command"]
    expected = {
        "STORAGE_BACKEND": "local",
        "LOCAL_STORAGE_ROOT": str(root / "bucket"),
        "S3_CHECKSUM_ALGORITHM": "SHA256",
        "S3_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "S3_VERIFY_PART_ETAG": False,
        "S3_ENDPOINT_URL": None,
        "S3_PUBLIC_ENDPOINT_URL": None,
        "PUBLIC_BASE_URL": None,
        "DOWNLOAD_URL_TTL": 3600,
        "UPLOAD_STAGING_DIR": str(root / "staging"),
        "UPLOAD_STAGING_TTL": 86400,
        "UPLOAD_STAGING_MIN_FREE_BYTES": 1073741824,
        "UPLOAD_MAX_BYTES": 5368709120,
        "UPLOAD_ALLOWED_TYPES": ["*"],
        "UPLOAD_MAX_ACTIVE_PER_USER": 10,
        "UPLOAD_PART_SIZE": 8388608,
        "UPLOAD_PART_CONCURRENCY": 4,
        "UPLOAD_PART_RETRIES": 5,
        "UPLOAD_PART_DELAY_MS": 0,
        "UPLOAD_HEARTBEAT_SECONDS": 2,
        "UPLOAD_STALE_AFTER_SECONDS": 10,
        "PROGRESS_RESYNC_SECONDS": 10,
        "CORS_ALLOWED_ORIGINS": [],
    }
    assert {name: values[name] for name in expected} == expected


def test_values_are_parsed_from_the_environment() -> None:
    values = read_settings(
        UPLOAD_ALLOWED_TYPES="image/*,video/mp4",
        UPLOAD_MAX_BYTES="1048576",
        UPLOAD_HEARTBEAT_SECONDS="0.5",
        S3_ENDPOINT_URL="http://minio:9000",
        S3_CHECKSUM_ALGORITHM="crc32",
        PUBLIC_BASE_URL="https://uploads.example.com/",
        CORS_ALLOWED_ORIGINS="https://app.example.com",
        GRAPHIQL="false",
        DATABASE_URL="postgres://u:p@db.example:5432/uploads",
    )
    assert values["UPLOAD_ALLOWED_TYPES"] == ["image/*", "video/mp4"]
    assert values["UPLOAD_MAX_BYTES"] == 1048576
    assert values["UPLOAD_HEARTBEAT_SECONDS"] == 0.5
    # The public endpoint defaults to the one the server uses.
    assert values["S3_PUBLIC_ENDPOINT_URL"] == "http://minio:9000"
    assert values["S3_CHECKSUM_ALGORITHM"] == "CRC32"
    assert values["PUBLIC_BASE_URL"] == "https://uploads.example.com"
    assert values["CORS_ALLOWED_ORIGINS"] == ["https://app.example.com"]
    assert values["GRAPHIQL"] is False
    database = values["DATABASES"]["default"]
    assert (database["ENGINE"], database["HOST"], database["NAME"]) == (
        "django.db.backends.postgresql",
        "db.example",
        "uploads",
    )


def test_unknown_storage_backend_refuses_to_start() -> None:
    done = run_settings(STORAGE_BACKEND="ftp")
    assert done.returncode != 0
    assert "STORAGE_BACKEND" in done.stderr


PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "a-real-secret-" + "x" * 50,
    "ALLOWED_HOSTS": "uploads.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
}


def test_production_defaults_secure_cookies_hsts_and_redirect_behind_a_tls_proxy() -> None:
    values = read_settings(**PRODUCTION)
    assert values["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is True
    assert (values["SECURE_HSTS_SECONDS"], values["SECURE_HSTS_INCLUDE_SUBDOMAINS"]) == (31536000, True)
    assert values["SECURE_SSL_REDIRECT"] is True
    # Without the proxy header the app cannot tell HTTPS requests apart: no redirect loop.
    assert read_settings(**{**PRODUCTION, "SECURE_PROXY_SSL_HEADER": ""})["SECURE_SSL_REDIRECT"] is False


def test_development_defaults_leave_https_alone() -> None:
    values = read_settings()
    assert values["SECURE_PROXY_SSL_HEADER"] is None
    assert (values["SESSION_COOKIE_SECURE"], values["SECURE_HSTS_SECONDS"], values["SECURE_SSL_REDIRECT"]) == (
        False,
        0,
        False,
    )


def test_a_malformed_proxy_ssl_header_refuses_to_start() -> None:
    done = run_settings(SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert done.returncode != 0 and "SECURE_PROXY_SSL_HEADER" in done.stderr


def test_security_limits_defaults() -> None:
    values = read_settings()
    expected = {
        "GRAPHQL_MAX_DEPTH": 10,
        "GRAPHQL_MAX_ALIASES": 15,
        "GRAPHQL_MAX_TOKENS": 2000,
        "GRAPHQL_MAX_OPERATIONS_BYTES": 65536,
        "DATA_UPLOAD_MAX_MEMORY_SIZE": 65536,
        "DATA_UPLOAD_MAX_NUMBER_FILES": 10,
        "REQUEST_IDLE_TIMEOUT_SECONDS": 30,
        "WS_AUTH_RECHECK_SECONDS": 30,
    }
    assert {name: values[name] for name in expected} == expected


def test_check_deploy_passes_under_the_production_settings(tmp_path: Path) -> None:
    """`manage.py check --deploy` with warnings as failures; the one silenced id (security.W021,
    HSTS preload) is justified in settings.py."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env = {**base, **PRODUCTION, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues (1 silenced)" in done.stdout
