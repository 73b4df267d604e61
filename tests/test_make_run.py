"""`make run` (scripts/run_local.py) as a newcomer runs it: migrate, seed the demo tenant, a
local MongoDB (secantusdb) beside the service, and nothing left running once the service is
gone. Real processes in a tmp working directory, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.conftest import SpawnFactory
from tests.mongo_server import MongoServer, server_binary
from tests.service.submissions.conftest import SUBMISSIONS
from tests.service.submissions.factories import declaration
from tests.support import (
    FAST_ARGON2,
    REPOSITORY,
    Spawned,
    free_port,
    process_env,
    wait_until_live,
)

SCRIPT = REPOSITORY / "scripts" / "run_local.py"
READY = "/api/v1/health/ready"
LOGIN = "/api/v1/auth/login"
DEMO_OWNER = "owner@demo.example.com"
START_TIMEOUT_SECONDS = 90.0


def run_local_env(http_port: int, **overrides: str) -> dict[str, str]:
    return process_env(
        BERTH_ENVIRONMENT="local",
        BERTH_HTTP__PORT=str(http_port),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        **{f"BERTH_AUTH__{name.upper()}": str(value) for name, value in FAST_ARGON2.items()},
        **overrides,
    )


def start(spawn: SpawnFactory, env: dict[str, str]) -> Spawned:
    return spawn(str(SCRIPT), env=env, name="run-local")


def pid_of(process: Spawned, what: str) -> int:
    """A pid the script reported on stderr: `MongoDB (secantusd-py, pid N)`, `service pid N`."""
    pattern = {"mongo": r"MongoDB \(secantusd-py, pid (\d+)\)", "service": r"service pid (\d+)"}
    found = re.search(pattern[what], process.stderr())
    assert found, f"no {what} pid reported: {process.describe()}"
    return int(found.group(1))


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def gone(pid: int) -> bool:
    """No such process (or only its zombie, which holds nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def wait_until_gone(pid: int, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not gone(pid):
        if loop.time() > deadline:
            pytest.fail(f"process {pid} still running: {command_line(pid)}", pytrace=False)
        await asyncio.sleep(0.05)


async def wait_until_mongo_ready(base_url: str, process: Spawned, timeout: float = 60) -> None:
    """Readiness lists its checks by name; MongoDB is optional, so poll for `mongo: ok`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    report: Any = None
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while loop.time() < deadline:
            if not process.running():
                pytest.fail(f"exited before MongoDB was ready: {process.describe()}")
            with contextlib.suppress(httpx.TransportError):
                report = (await client.get(READY)).json()
                checks = {check["name"]: check["status"] for check in report["checks"]}
                if checks.get("mongo") == "ok":
                    return
            await asyncio.sleep(0.2)
    pytest.fail(f"mongo never ok in {READY}: {report}\n{process.describe()}", pytrace=False)


def shown_password(process: Spawned) -> str:
    [password] = [line.split(":", 1)[1].strip()
                  for line in process.stdout().splitlines() if "password:" in line]  # fmt: skip
    return password


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port something else listens on for the block."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_make_run_serves_submissions_on_a_local_mongodb_and_sigterm_stops_both(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    http_port, mongo_port = free_port(), free_port()
    run = start(spawn, run_local_env(http_port, BERTH_LOCAL_MONGO_PORT=str(mongo_port)))
    base_url = f"http://127.0.0.1:{http_port}"
    await wait_until_live(base_url, run, timeout=START_TIMEOUT_SECONDS)
    await wait_until_mongo_ready(base_url, run)
    mongo_pid, service_pid = pid_of(run, "mongo"), pid_of(run, "service")
    assert "secantusd-py" in command_line(mongo_pid)
    assert f"--port {mongo_port}" in command_line(mongo_pid)
    assert "service serve" in command_line(service_pid)

    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        login = await client.post(
            LOGIN, json={"email": DEMO_OWNER, "password": shown_password(run)}
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = await client.post(SUBMISSIONS, json=declaration(items=10), headers=headers)
        assert created.status_code == 202, created.text
        location = created.headers["Location"]
        # The worker of this replica processes it on the local replica set.
        status = created.json()["status"]
        for _ in range(200):
            if status == "PROCESSED":
                break
            await asyncio.sleep(0.1)
            status = (await client.get(location, headers=headers)).json()["status"]
        assert status == "PROCESSED"

    run.signal(signal.SIGTERM)

    assert await run.wait(timeout=40) == 0, run.describe()
    await wait_until_gone(service_pid)
    await wait_until_gone(mongo_pid)
    assert (tmp_path / "data" / "mongo").is_dir()  # the data stays for the next `make run`
    assert "MongoDB stopped" in run.stderr()


async def test_a_crashing_service_takes_the_local_mongodb_down_with_it(
    spawn: SpawnFactory,
) -> None:
    with listening() as taken:  # the service cannot bind its port and exits
        run = start(spawn, run_local_env(taken, BERTH_LOCAL_MONGO_PORT=str(free_port())))
        code = await run.wait(timeout=START_TIMEOUT_SECONDS)

    assert code != 0, run.describe()
    assert "the service exited with" in run.stderr()
    await wait_until_gone(pid_of(run, "mongo"))
    await wait_until_gone(pid_of(run, "service"))


async def test_a_taken_mongodb_port_is_one_clear_line_and_no_service_starts(
    spawn: SpawnFactory,
) -> None:
    with listening() as taken:
        run = start(spawn, run_local_env(free_port(), BERTH_LOCAL_MONGO_PORT=str(taken)))
        code = await run.wait(timeout=START_TIMEOUT_SECONDS)

    lines = [line for line in run.stderr().splitlines() if line.startswith("run-local:")]
    assert code == 1
    assert lines == [
        f"run-local: port 127.0.0.1:{taken} (BERTH_LOCAL_MONGO_PORT) is taken (another "
        "`make run`?); choose another or leave it unset"
    ]


async def test_a_mongodb_that_fails_to_start_is_one_clear_line(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    storage = tmp_path / "data" / "mongo"
    storage.parent.mkdir()
    holder = MongoServer(free_port(), str(storage), log_path=tmp_path / "holder.log")
    holder.start()  # holds the storage's lock, as a `make run` left running would
    try:
        run = start(spawn, run_local_env(free_port(), BERTH_LOCAL_MONGO_PORT=str(free_port())))
        code = await run.wait(timeout=START_TIMEOUT_SECONDS)
    finally:
        holder.stop()

    lines = [line for line in run.stderr().splitlines() if line.startswith("run-local:")]
    assert code == 1
    assert len(lines) == 1, run.describe()
    assert "secantusd-py failed to start" in lines[0]
    assert "data/mongo is in use by another secantusd-py" in lines[0]
    assert "service pid" not in run.stderr()


async def test_a_configured_mongodb_url_is_used_and_no_local_server_starts(
    tmp_path: Path, spawn: SpawnFactory, mongo_server: MongoServer
) -> None:
    http_port = free_port()
    run = start(spawn, run_local_env(http_port, BERTH_MONGO__URL=mongo_server.url))
    base_url = f"http://127.0.0.1:{http_port}"
    await wait_until_live(base_url, run, timeout=START_TIMEOUT_SECONDS)
    await wait_until_mongo_ready(base_url, run)

    run.signal(signal.SIGTERM)

    assert await run.wait(timeout=40) == 0, run.describe()
    assert "BERTH_MONGO__URL is set: using that MongoDB" in run.stderr()
    assert "secantusd-py, pid" not in run.stderr()
    assert not (tmp_path / "data" / "mongo").exists()


# The pieces, in-process.


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_local", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_local", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_a_missing_secantusd_is_one_line_that_says_what_to_do(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(script.RunLocalError) as raised:
        script.server_binary()

    message = str(raised.value)
    assert "\n" not in message
    assert "secantusd-py not found" in message
    assert "make install" in message


def test_the_binary_is_the_one_beside_the_virtualenvs_python(script: ModuleType) -> None:
    assert script.server_binary() == server_binary()


def test_the_default_port_is_27018_or_any_free_one_when_that_is_taken(
    script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(script, "port_is_free", lambda port: True)
    assert script.choose_port({}) == 27018

    monkeypatch.setattr(script, "port_is_free", lambda port: port != 27018)
    assert script.choose_port({}) != 27018


@pytest.mark.parametrize("value", ["x", "0", "70000"])
def test_a_port_that_is_no_port_is_refused(script: ModuleType, value: str) -> None:
    with pytest.raises(script.RunLocalError, match="is not a port number"):
        script.choose_port({"BERTH_LOCAL_MONGO_PORT": value})


def test_the_script_never_imports_secantusdb() -> None:
    """A dev dependency the service package must not know: run as a binary only."""
    source = SCRIPT.read_text()
    assert "import secantus" not in source
    assert "from secantus" not in source
    result = subprocess.run(
        [sys.executable, "-c", f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='x'); "
         "import sys; assert not any(m.startswith('secantus') for m in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
