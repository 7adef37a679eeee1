"""The development login `make run` prints works against the database in use, whichever it is.

`python -m backend.stack` (what `make run` runs) is started for real in a copy of the project (its
own `var/`, its own embedded Redis, a free `PORT`), stopped with SIGINT as Ctrl-C does, and started
again on a second database with the same `var/dev-credentials`, then on the first one again. Each
time the printed password must log in through the login form and the printed token must be
accepted by /graphql.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from backend.stack import free_port
from tests.support.client import graphql
from tests.support.processes import ROOT, wait_until

pytestmark = pytest.mark.slow

PRINTED = re.compile(r"user (\S+)\s+password (\S+)\n\s+token:\s+(\S+)")


@dataclass
class Printed:
    username: str
    password: str
    token: str


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """What `make run` needs of the project, copied: its var/ is this test's alone."""
    copy = tmp_path / "checkout"
    copy.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("backend", "schema"):
        shutil.copytree(ROOT / tree, copy / tree, ignore=ignore)
    shutil.copy2(ROOT / "manage.py", copy / "manage.py")
    return copy


class RunningStack:
    def __init__(self, checkout: Path, database: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = checkout / f"run-{uuid.uuid4().hex[:6]}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(DATABASE_URL=f"sqlite:///{checkout / 'var' / database}", PORT=str(self.port), WORKERS="1")
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend.stack"],
                cwd=checkout,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def printed(self) -> Printed:
        def found() -> re.Match[str] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"make run exited: {self.log.read_text()[-3000:]}")
            return PRINTED.search(self.log.read_text())

        match = wait_until(found, timeout=120, what=f"make run to print the credentials ({self.log})")
        return Printed(*match.groups())

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Ctrl-C: SIGINT to the whole process group, as a terminal sends it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def run_stack(checkout: Path) -> Iterator[Callable[[str], RunningStack]]:
    started: list[RunningStack] = []

    def run(database: str) -> RunningStack:
        stack = RunningStack(checkout, database)
        started.append(stack)
        return stack

    yield run
    for stack in started:
        stack.stop()


def assert_login_works(url: str, printed: Printed) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        form = http.get("/accounts/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert csrf, form.text
        answer = http.post(
            "/accounts/login/",
            data={"username": printed.username, "password": printed.password, "csrfmiddlewaretoken": csrf.group(1)},
        )
        assert answer.status_code == 302, f"the printed password does not log in: {answer.text[:500]}"
        assert "sessionid" in http.cookies
    answer = graphql(url, "{ uploads(first: 1) { totalCount } }", {}, {"Authorization": f"Bearer {printed.token}"})
    assert answer.status_code == 200, answer.text
    assert "errors" not in answer.json(), answer.json()
    assert answer.json()["data"]["uploads"]["totalCount"] == 0


def test_printed_credentials_work_on_every_database_the_stack_starts_on(checkout: Path, run_stack) -> None:
    credentials_file = checkout / "var" / "dev-credentials"

    first = run_stack("first.sqlite3")
    printed_first = first.printed()
    wait_until(first.healthy, timeout=60, what="the first stack's server")
    assert_login_works(first.url, printed_first)
    first.stop()
    assert json.loads(credentials_file.read_text()) == {
        "username": "dev",
        "password": printed_first.password,
        "token": printed_first.token,
    }

    # A new database (as after `rm var/db.sqlite3`, or DATABASE_URL pointing elsewhere), same var/.
    second = run_stack("second.sqlite3")
    printed_second = second.printed()
    wait_until(second.healthy, timeout=60, what="the second stack's server")
    assert_login_works(second.url, printed_second)
    second.stop()
    assert printed_second.password == printed_first.password, "the password in the file is kept"
    assert json.loads(credentials_file.read_text())["token"] == printed_second.token, "the file matches the print"
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600

    # Back on the first database: the token made for the second is repaired there too.
    third = run_stack("first.sqlite3")
    printed_third = third.printed()
    wait_until(third.healthy, timeout=60, what="the third stack's server")
    assert_login_works(third.url, printed_third)


def test_dev_user_ensure_repairs_what_the_database_lacks(make_user) -> None:
    """The service itself, on the test database: each way a stored login can stop working."""
    from django.contrib.auth import authenticate

    from backend.tokens.services import dev_user_ensure, token_revoke, token_user

    username, password = f"dev-{uuid.uuid4().hex[:8]}", "kept-password"
    token = dev_user_ensure(username=username, password=password, token="never-issued-here")
    assert token != "never-issued-here"
    user = token_user(token=token)
    assert user is not None and user.username == username and user.is_superuser and user.is_staff
    assert authenticate(username=username, password=password) is not None

    assert dev_user_ensure(username=username, password=password, token=token) == token, "a good token is kept"

    user.set_password("changed-elsewhere")
    user.is_active = False
    user.save()
    assert dev_user_ensure(username=username, password=password, token=token) == token
    assert authenticate(username=username, password=password) is not None

    token_revoke(token=token)
    renewed = dev_user_ensure(username=username, password=password, token=token)
    assert renewed != token and token_user(token=renewed).username == username

    someone_else = make_user()
    mine = dev_user_ensure(username=username, password=password, token=someone_else.token)
    assert mine != someone_else.token, "another user's token is not printed as dev's"
