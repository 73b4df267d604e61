#!/usr/bin/env python3
"""`make run`: berth on a laptop with every feature and no server installed.

Migrates the SQLite control plane, seeds the demo tenant (its owner's password is printed
once), starts a local MongoDB-protocol server for submissions beside the service
(secantusdb's `secantusd-py`, a dev dependency: a one-node replica set, data under
`./data/mongo`, log in `./data/mongo.log`, on 127.0.0.1), and runs `python -m service serve`
with `BERTH_MONGO__URL` pointing at it. When the service exits (Ctrl-C, SIGTERM, a crash) the
MongoDB server is stopped too; it also gets SIGTERM should this script itself be killed.

    BERTH_LOCAL_MONGO_PORT=27100 make run   # its port (default 27018, or a free one if taken)
    BERTH_LOCAL_MONGO=off make run          # no local MongoDB: submissions answer 503
    BERTH_MONGO__URL=mongodb://... make run # your own server; none is started

Run it with the project's virtualenv Python from the directory the service should run in:
`.venv/bin/python scripts/run_local.py` (`make run` does). It never imports secantusdb: the
service package does not know it exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

PREFIX = "run-local:"
HOST = "127.0.0.1"
DEFAULT_MONGO_PORT = 27018
PORT_ENV = "BERTH_LOCAL_MONGO_PORT"
SWITCH_ENV = "BERTH_LOCAL_MONGO"  # "off" (or 0/false/no): serve without a local MongoDB
MONGO_URL_ENV = "BERTH_MONGO__URL"
BINARY = "secantusd-py"
STORAGE = Path("data") / "mongo"
LOG = Path("data") / "mongo.log"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class RunLocalError(RuntimeError):
    """A one-line reason `make run` cannot go on."""


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def mongo_url_of(port: int) -> str:
    return f"mongodb://{HOST}:{port}/?directConnection=true"


def configured_mongo_url() -> str | None:
    """BERTH_MONGO__URL as the service will read it (environment or `.env`), if set."""
    from pydantic import ValidationError

    from service.core.config import Settings

    try:
        url = Settings().mongo.url
    except ValidationError:
        # The service reports invalid settings itself, with every field; here only whether
        # a MongoDB URL was given matters.
        return os.environ.get(MONGO_URL_ENV) or None
    return url.get_secret_value() if url is not None else None


def local_mongo_wanted() -> bool:
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in {"off", "0", "false", "no"}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def choose_port(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """BERTH_LOCAL_MONGO_PORT when given (it must be free); else 27018, or any free port."""
    given = environ.get(PORT_ENV, "").strip()
    if given:
        try:
            port = int(given)
        except ValueError:
            raise RunLocalError(f"{PORT_ENV}={given!r} is not a port number") from None
        if not 0 < port < 65536:
            raise RunLocalError(f"{PORT_ENV}={port} is not a port number")
        if not port_is_free(port):
            raise RunLocalError(
                f"port {HOST}:{port} ({PORT_ENV}) is taken (another `make run`?); "
                "choose another or leave it unset"
            )
        return port
    if port_is_free(DEFAULT_MONGO_PORT):
        return DEFAULT_MONGO_PORT
    return any_free_port()


def server_binary() -> Path:
    """`secantusd-py` beside this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file():
        return beside
    found = shutil.which(BINARY)
    if found is None:
        raise RunLocalError(
            f"{BINARY} not found (the dev dependency secantusdb: run `make install`), or set "
            f"{SWITCH_ENV}=off to serve without submissions, or {MONGO_URL_ENV} for your own"
        )
    return Path(found)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when this script dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _log_since(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")
    return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


@dataclass
class LocalMongo:
    """One secantusd-py, in its own session (a terminal's Ctrl-C goes to the service only;
    this script stops the server once the service is gone)."""

    port: int
    storage: Path = STORAGE
    log: Path = LOG
    process: subprocess.Popen[bytes] | None = None
    _log_offset: int = 0

    @property
    def url(self) -> str:
        return mongo_url_of(self.port)

    def start(self) -> None:
        binary = server_binary()
        try:
            self.storage.mkdir(parents=True, exist_ok=True)
            self.log.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunLocalError(f"cannot use {self.storage} for MongoDB's data: {exc}") from None
        self._log_offset = self.log.stat().st_size if self.log.is_file() else 0
        # No --standalone: a one-node replica set (transactions, change streams).
        command = [str(binary), "--host", HOST, "--port", str(self.port),
                   "--storage-path", str(self.storage), "--log-level", "WARNING"]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own command line)
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise

    def _wait_until_answering(self) -> None:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RunLocalError(self._failure(code))
            try:
                client: MongoClient[dict[str, Any]]
                with MongoClient(self.url, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except PyMongoError:
                time.sleep(0.1)
        raise RunLocalError(
            f"{BINARY} did not answer on {HOST}:{self.port} within {START_TIMEOUT_SECONDS:g} s; "
            f"see {self.log}"
        )

    def _failure(self, code: int) -> str:
        output = _log_since(self.log, self._log_offset)
        if "already being managed by another process" in output:
            why = f"{self.storage} is in use by another {BINARY} (another `make run`?)"
        else:
            why = f"exit {code}: {_last_line(output)}"
        return f"{BINARY} failed to start on {HOST}:{self.port} ({why}); see {self.log}"

    def last_words(self) -> str:
        return _last_line(_log_since(self.log, self._log_offset))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL what is left after STOP_TIMEOUT_SECONDS."""
        process, self.process = self.process, None
        if process is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def local_mongo() -> Iterator[tuple[str | None, LocalMongo | None]]:
    """The MongoDB URL the service gets, and a server started for it unless one is configured
    or BERTH_LOCAL_MONGO=off; the server is stopped when the block ends, however it ends."""
    if configured := configured_mongo_url():
        say(f"{MONGO_URL_ENV} is set: using that MongoDB, not starting a local one")
        yield configured, None
        return
    if not local_mongo_wanted():
        say(f"{SWITCH_ENV}=off: no local MongoDB; the submissions endpoints answer 503")
        yield None, None
        return
    server = LocalMongo(choose_port())
    server.start()
    assert server.process is not None
    say(f"MongoDB ({BINARY}, pid {server.process.pid}) on {HOST}:{server.port}, "
        f"data in {server.storage}, log in {server.log}")  # fmt: skip
    try:
        yield server.url, server
    finally:
        server.stop()
        say("MongoDB stopped")


def run_step(python: str, *args: str) -> None:
    command = [python, "-m", "service", *args]
    result = subprocess.run(command, check=False)  # noqa: S603 (our own command line)
    if result.returncode != 0:
        raise RunLocalError(f"`python -m service {' '.join(args)}` exited {result.returncode}")


class Forwarder:
    """SIGINT/SIGTERM to this script end the service gracefully: SIGTERM, then SIGKILL at the
    third. A terminal's Ctrl-C reaches the service as SIGINT too (same process group); uvicorn
    counts a following SIGTERM as no second Ctrl-C, so its drain is not cut short. Installed
    before the service starts: a signal in between is passed on once it has started."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.received = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        self._forward()

    def started(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        if self.received:
            self._forward()

    def _forward(self) -> None:
        if self.process is None:
            return
        sig = signal.SIGTERM if self.received < 3 else signal.SIGKILL
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)


def serve(python: str, mongo_url: str | None, mongo: LocalMongo | None) -> int:
    """Run the service until it exits; its exit code (128 + n when killed by signal n)."""
    env = dict(os.environ)
    if mongo_url is not None:
        env[MONGO_URL_ENV] = mongo_url
    forward = Forwarder()
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        command = [python, "-m", "service", "serve"]
        process = subprocess.Popen(command, env=env)  # noqa: S603 (our own command line)
        forward.started(process)
        say(f"service pid {process.pid}")
        while (code := process.poll()) is None:
            if mongo is not None and mongo.process is not None and not mongo.running():
                say(f"MongoDB exited ({mongo.last_words()}); submissions answer 503 "
                    "until `make run` is started again")  # fmt: skip
                mongo = None
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    python = sys.executable
    # Until the service runs, Ctrl-C and SIGTERM unwind normally (stopping MongoDB if started),
    # even where SIGINT was inherited as ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run_step(python, "migrate")
        run_step(python, "seed-demo")
        with local_mongo() as (mongo_url, mongo):
            code = serve(python, mongo_url, mongo)
    except RunLocalError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    if code not in (0, 130, 143):
        say(f"the service exited with {code}")
    return code


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
