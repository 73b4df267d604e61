"""A real MongoDB-protocol server for tests: secantusdb's `secantusd-py` on a free port.

Started without `--standalone`, so it is a one-node replica set (transactions and change
streams work). `--auth` needs its users created before the restart that turns it on, so an
auth server is started twice on one storage directory: open, to create the admin user, then
with `--auth`. Known gaps of the server: ../shared/PITFALLS.md.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.support import free_port, unavailable

ADMIN_USER = "berth-admin"
ADMIN_PASSWORD = "berth-admin-test-password"  # a throwaway test server
START_TIMEOUT_SECONDS = 30


def server_binary() -> Path:
    """`secantusd-py` from the venv (a dev dependency); missing is a failure under CI."""
    found = Path(sys.executable).parent / "secantusd-py"
    if not found.is_file():
        unavailable("secantusd-py (dev dependency secantusdb)", "not installed")
    return found


def url_of(port: int, user: str | None = None, password: str | None = None) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user else ""
    return f"mongodb://{credentials}127.0.0.1:{port}/?directConnection=true"


@dataclass
class MongoServer:
    """One running server; `url` reaches it (as the admin when it runs with `--auth`)."""

    port: int
    storage: str
    auth: bool = False
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        if self.auth:
            return url_of(self.port, ADMIN_USER, ADMIN_PASSWORD)
        return url_of(self.port)

    def url_for(self, user: str, password: str) -> str:
        return url_of(self.port, user, password)

    def start(self) -> None:
        args = [str(server_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                "--storage-path", self.storage, "--log-level", "WARNING"]  # fmt: skip
        if self.auth:
            args.append("--auth")
        log = (self.log_path or Path(self.storage).with_suffix(".log")).open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_answering()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                unavailable("secantusd-py", f"exited with {self.process.returncode}")
            try:
                with MongoClient(self.url, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except PyMongoError as exc:
                last_error = exc
                time.sleep(0.1)
        unavailable("secantusd-py", f"no answer in {START_TIMEOUT_SECONDS} s: {last_error}")


@contextlib.contextmanager
def mongo_server(directory: Path, *, auth: bool = False) -> Iterator[MongoServer]:
    """A server for the block; with `auth`, one admin user (root) exists and auth is on."""
    if not auth:
        server = MongoServer(free_port(), ":memory:", log_path=directory / "mongo.log")
        server.start()
        try:
            yield server
        finally:
            server.stop()
        return
    storage = directory / "mongo-auth"
    server = MongoServer(free_port(), str(storage), log_path=directory / "mongo-auth.log")
    server.start()
    try:
        with MongoClient(server.url) as client:
            client.admin.command(
                "createUser",
                ADMIN_USER,
                pwd=ADMIN_PASSWORD,
                roles=[{"role": "root", "db": "admin"}],
            )
    finally:
        server.stop()
    server.auth = True
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(storage, ignore_errors=True)
