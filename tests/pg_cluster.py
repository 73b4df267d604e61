"""A throwaway PostgreSQL cluster that really checks passwords (scram-sha-256 everywhere).

The machine's main PostgreSQL trusts every local connection, so a test against it cannot prove
that a rotated password is refused. `scram_cluster` runs `initdb` with scram-sha-256 for both
local and host lines of pg_hba.conf, starts the server on a free port of 127.0.0.1 and always
stops it again (`pg_ctl stop -m immediate`, then SIGKILL if that did not work), even when the
body raised. Starting takes well under a second; nothing is printed.

Running as root: PostgreSQL refuses to run as root, and tests here do. When ``os.geteuid() == 0``
the helper creates (or reuses) the unprivileged system user ``berthpg`` (``useradd --system
--no-create-home``) and runs initdb/pg_ctl as that user through ``setpriv`` (no PAM), falling
back to ``runuser -u`` and then ``su`` - whichever first proves to work. The cluster's
directory is chowned to ``berthpg``. pytest's ``tmp_path`` under ``/tmp/pytest-of-root`` is mode
0700, so ``berthpg`` cannot reach it: the data directory and socket then live in a private
``/tmp/berthpg-*`` directory that is removed on exit. The same fallback is used when
``workdir`` is too long for a Unix socket path (107 bytes).

The server log is always ``workdir/postgres.log``: it is opened by this process and inherited
by pg_ctl and the server (instead of ``pg_ctl -l``, which makes the server user open it by
path and fails in those 0700 directories), so it outlives the cluster for post-mortems.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

SERVER_USER = "berthpg"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_START_ATTEMPTS = 5  # a free port can be taken by someone else before the server binds it
_PG_CTL_WAIT_SECONDS = 30
_COMMAND_TIMEOUT_SECONDS = 90
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_LOG_TAIL_LINES = 40
_SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])


@dataclass(frozen=True)
class ScramCluster:
    """A running throwaway cluster; every role in it logs in with a scram-sha-256 password."""

    host: str
    port: int
    superuser: str
    superuser_password: str
    log_path: Path
    data_dir: Path
    socket_dir: Path
    pid: int

    @property
    def admin_url(self) -> str:
        """libpq URL of the superuser on the `postgres` database."""
        return self.url(self.superuser, self.superuser_password, "postgres")

    def url(self, user: str, password: str, database: str, driver: str = "postgresql") -> str:
        """A URL for `user`; `driver` may be e.g. "postgresql+asyncpg" for SQLAlchemy.

        User, password and database are percent-encoded, so any password round-trips.
        """
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"{driver}://{credentials}@{self.host}:{self.port}/{quote(database, safe='')}"


@dataclass(frozen=True)
class _Runner:
    """How to run a server binary: directly, or as the unprivileged user when we are root."""

    uid: int | None
    gid: int | None
    wrap: Sequence[str]  # argv prefix; a trailing "-c" means: append one shell command string

    def argv(self, command: Sequence[str]) -> list[str]:
        if self.wrap and self.wrap[-1] == "-c":
            return [*self.wrap, shlex.join(command)]
        return [*self.wrap, *command]

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def server_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres; raises if they are not installed.

    Asks `pg_config --bindir` first; without pg_config, takes the highest
    /usr/lib/postgresql/<version>/bin (Debian's layout).
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())

    debian = Path("/usr/lib/postgresql")
    candidates += sorted(debian.glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    looked = ", ".join(str(path) for path in candidates) or "nothing (no pg_config, no Debian dirs)"
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in "
        f"{looked}. Install the postgresql-15 server package."
    )


@functools.cache
def _runner() -> _Runner:
    """Ourselves when unprivileged; otherwise the `berthpg` user via the first tool that works."""
    if os.geteuid() != 0:
        return _Runner(uid=None, gid=None, wrap=())
    entry = _ensure_server_user()
    uid, gid = entry.pw_uid, entry.pw_gid
    options: list[tuple[str, list[str]]] = [
        ("setpriv", [f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]),
        ("runuser", ["-u", SERVER_USER, "--"]),
        ("su", ["-s", "/bin/sh", SERVER_USER, "-c"]),
    ]
    tried: list[str] = []
    for tool, arguments in options:
        path = shutil.which(tool, path=_SEARCH_PATH)
        if path is None:
            tried.append(f"{tool}: not installed")
            continue
        runner = _Runner(uid=uid, gid=gid, wrap=(path, *arguments))
        probe = subprocess.run(
            runner.argv(["id", "-u"]),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            cwd="/",
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(uid):
            return runner
        tried.append(f"{tool}: exit {probe.returncode} {probe.stderr.strip()[:200]}")
    raise RuntimeError(
        f"running as root, but cannot run commands as {SERVER_USER!r}: " + "; ".join(tried)
    )


def _ensure_server_user() -> pwd.struct_passwd:
    """The unprivileged OS user the server runs as under root, created if missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVER_USER)
    useradd = shutil.which("useradd", path=_SEARCH_PATH) or "useradd"
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--user-group",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "berth throwaway PostgreSQL for tests",
            SERVER_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    try:  # a concurrent test run may have created it first (useradd exit 9)
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise RuntimeError(
            f"could not create OS user {SERVER_USER!r} (useradd exit {result.returncode}): "
            f"{result.stderr.strip()}"
        ) from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _socket_path_fits(directory: Path) -> bool:
    return len(os.fsencode(directory / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX


def _server_can_use(directory: Path, runner: _Runner, env: Mapping[str, str]) -> bool:
    """Whether the server user can reach `directory` once it owns it (ancestors searchable)."""
    if not _socket_path_fits(directory):
        return False
    if runner.uid is None:
        return True
    probe = subprocess.run(
        runner.argv(["test", "-x", str(directory.parent)]),
        capture_output=True,
        check=False,
        timeout=30,
        cwd="/",
        env=dict(env),
    )
    return probe.returncode == 0


def _server_env() -> dict[str, str]:
    """Our environment without PG* variables (PGPORT, PGDATA... would steer the binaries)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _log_tail(log_path: Path, offset: int) -> str:
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {log_path}: {exc})"
    lines = text.strip().splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) or "(the log is empty)"


def _run(
    what: str,
    command: Sequence[str],
    *,
    runner: _Runner,
    log: BinaryIO,
    log_path: Path,
    cwd: Path,
    env: Mapping[str, str],
) -> None:
    """Run a server binary with its output appended to the log; raise with the log's tail."""
    log.flush()
    offset = log_path.stat().st_size
    try:
        result = subprocess.run(
            runner.argv(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            check=False,
            timeout=_COMMAND_TIMEOUT_SECONDS,
        )
        returncode: int | str = result.returncode
    except subprocess.TimeoutExpired:
        returncode = f"timeout after {_COMMAND_TIMEOUT_SECONDS}s"
    if returncode != 0:
        raise RuntimeError(
            f"PostgreSQL {what} failed ({returncode}); last lines of {log_path}:\n"
            f"{_log_tail(log_path, offset)}"
        )


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first_line = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(first_line)
    except (OSError, IndexError, ValueError):
        return None


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is still the postmaster of `data_dir` (not a reused pid) and alive."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(data_dir) in argv and _process_alive(pid)


def _kill(pid: int, data_dir: Path) -> None:
    """Last resort when pg_ctl could not stop the server: SIGKILL and wait until it is gone."""
    if not _is_our_postmaster(pid, data_dir):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def scram_cluster(
    workdir: Path, *, settings: Mapping[str, str] | None = None
) -> Iterator[ScramCluster]:
    """Start a scram-sha-256 PostgreSQL cluster for the body; stop it, whatever happens.

    `workdir` (created if missing) receives `postgres.log` and, when the server user can reach
    it, `data/` and the Unix socket; `data/` must not already hold a cluster. `settings` are
    extra server settings (`-c name=value`). Raises RuntimeError with the log's tail when
    initdb or the start fails. Blocking (about a second): call it from a sync fixture, or
    accept the pause in an async one.
    """
    workdir = Path(workdir).resolve()
    bindir = server_bindir()
    runner = _runner()
    env = _server_env()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "postgres.log"
    extra = dict(settings or {})
    for name in extra:
        if not _SETTING_NAME.match(name):
            raise ValueError(f"not a PostgreSQL setting name: {name!r}")

    private_home: Path | None = None
    data_dir: Path | None = None
    pid: int | None = None
    with log_path.open("ab") as log:
        try:
            if _server_can_use(workdir, runner, env):
                home = workdir
            else:
                private_home = home = Path(tempfile.mkdtemp(prefix="berthpg-", dir="/tmp"))
                if not _socket_path_fits(home):
                    raise RuntimeError(f"socket path under {home} is too long")
            runner.chown(home)
            data_dir = home / "data"
            run = functools.partial(_run, runner=runner, log=log, log_path=log_path, cwd=home)

            password = secrets.token_urlsafe(24)
            pwfile = home / f".superuser-{secrets.token_hex(4)}.pw"
            pwfile.touch(mode=0o600)
            try:
                pwfile.write_text(password + "\n")
                runner.chown(pwfile)
                run(
                    "initdb",
                    [
                        str(bindir / "initdb"),
                        f"--pgdata={data_dir}",
                        "--auth-local=scram-sha-256",
                        "--auth-host=scram-sha-256",
                        f"--username={SUPERUSER}",
                        f"--pwfile={pwfile}",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",  # a throwaway cluster never needs to survive a crash
                        "--no-instructions",
                    ],
                    env=env,
                )
            finally:
                pwfile.unlink(missing_ok=True)

            port = _start(run, bindir, data_dir, home, extra, log_path, env)
            pid = _postmaster_pid(data_dir)
            if pid is None:
                raise RuntimeError(f"PostgreSQL started but left no postmaster.pid in {data_dir}")
            yield ScramCluster(
                host=HOST,
                port=port,
                superuser=SUPERUSER,
                superuser_password=password,
                log_path=log_path,
                data_dir=data_dir,
                socket_dir=home,
                pid=pid,
            )
        finally:
            if data_dir is not None:
                _stop(runner, bindir, data_dir, log, env, pid)
            if private_home is not None:
                shutil.rmtree(private_home, ignore_errors=True)


def _start(
    run: functools.partial[None],
    bindir: Path,
    data_dir: Path,
    socket_dir: Path,
    settings: Mapping[str, str],
    log_path: Path,
    env: Mapping[str, str],
) -> int:
    """Start the server on a free port, retrying when another process grabbed it first."""
    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        server_settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": str(socket_dir),
            "fsync": "off",
            "password_encryption": "scram-sha-256",
            **settings,
        }
        options = [part for n, v in server_settings.items() for part in ("-c", f"{n}={v}")]
        offset = log_path.stat().st_size
        try:
            run(
                "start",
                [
                    str(bindir / "pg_ctl"),
                    f"--pgdata={data_dir}",
                    # pg_ctl splices -o into a /bin/sh command line: quote every word.
                    f"--options={shlex.join(options)}",
                    "--wait",
                    f"--timeout={_PG_CTL_WAIT_SECONDS}",
                    "start",
                ],
                env=env,
            )
        except RuntimeError:
            port_taken = "could not bind" in _log_tail(log_path, offset)
            if not port_taken or attempt == _START_ATTEMPTS:
                raise
            continue
        return port
    raise AssertionError("unreachable")


def _stop(
    runner: _Runner,
    bindir: Path,
    data_dir: Path,
    log: BinaryIO,
    env: Mapping[str, str],
    pid: int | None,
) -> None:
    """`pg_ctl stop -m immediate`; SIGKILL the postmaster if it is somehow still alive."""
    pid = _postmaster_pid(data_dir) or pid
    if pid is None or not _is_our_postmaster(pid, data_dir):
        return  # the server never started, or is already gone
    log.flush()
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(
            runner.argv(
                [
                    str(bindir / "pg_ctl"),
                    f"--pgdata={data_dir}",
                    "--mode=immediate",
                    "--wait",
                    f"--timeout={_PG_CTL_WAIT_SECONDS}",
                    "stop",
                ]
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=dict(env),
            check=False,
            timeout=_COMMAND_TIMEOUT_SECONDS,
        )
    _kill(pid, data_dir)
