"""The MongoDB side of `make bench`: a throwaway secantusdb and the submissions it holds.

`bench_mongo()` starts secantusdb's `secantusd-py` (the dev dependency the tests and `make run`
use) on 127.0.0.1, a free port, `:memory:` storage, without `--standalone` (a one-node replica
set, as in the tests), and stops it at the end however the run ended. Submissions are written
through a berth server's HTTP API (`seed_submissions`), so the documents are exactly what the
service writes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import stop_process_group

HOST = "127.0.0.1"
BINARY = "secantusd-py"
START_TIMEOUT_SECONDS = 30.0
SUBMISSIONS = "/api/v1/submissions"
STATS = f"{SUBMISSIONS}/stats"
POST_ITEMS = 10  # line items in the declaration target s posts
STATS_SUBMISSIONS = 5000  # what the tenant database behind target t holds
STATS_ITEMS = 10
SEED_THREADS = 8


class MongoSetupError(RuntimeError):
    """The MongoDB fixture could not be created or filled (message says which step)."""


@dataclass
class BenchMongo:
    url: str
    seeded: set[str] = field(default_factory=set)  # database prefixes already filled
    # The stats aggregation run straight from pymongo on a filled database, seconds per run:
    # what the server itself costs, beside what target t measures through berth.
    direct_stats_seconds: dict[str, list[float]] = field(default_factory=dict)


def declaration(items: int = POST_ITEMS, reference: str = "BENCH-1") -> dict[str, Any]:
    """A valid JSON declaration with `items` line items (tests/service/submissions' shape)."""
    return {
        "reference": reference,
        "declarant": {"name": "Acme GmbH", "eori": "DE123456789", "country": "DE"},
        "items": [
            {"description": f"Item {n}", "quantity": "2", "unit_value": "10.50",
             "currency": "EUR" if n % 2 else "USD", "origin_country": "CN", "hs_code": "847130"}
            for n in range(items)
        ],
    }  # fmt: skip


def declaration_body(items: int = POST_ITEMS) -> bytes:
    return json.dumps(declaration(items), separators=(",", ":")).encode()


def wrk_script(method: str, body: bytes | None) -> str:
    """A wrk Lua script sending every request with `method` and `body`; headers stay -H."""
    lines = [f"wrk.method = {_lua_string(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {_lua_string(body.decode())}")
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    """`text` as a Lua long string whose level no `]=...=]` inside it can close."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    equals = "=" * level
    # A long string drops a newline right after its opening bracket: keep a leading one.
    lead = "\n" if text.startswith("\n") else ""
    return f"[{equals}[{lead}{text}]{equals}]"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _server_binary() -> Path:
    found = Path(sys.executable).parent / BINARY
    if not found.is_file():
        raise MongoSetupError(f"{found} not found (the dev dependency secantusdb: make install)")
    return found


def _ping(url: str) -> None:
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]]
    with MongoClient(url, serverSelectionTimeoutMS=500) as client:
        client.admin.command("ping")


@contextlib.contextmanager
def bench_mongo(workdir: Path) -> Iterator[BenchMongo]:
    """secantusd-py on a free loopback port, in memory, in its own process group; stopped
    (SIGTERM, then SIGKILL) on exit."""
    from pymongo.errors import PyMongoError

    port = _free_port()
    url = f"mongodb://{HOST}:{port}/?directConnection=true"
    log_path = workdir / "mongo.log"
    command = [str(_server_binary()), "--host", HOST, "--port", str(port),
               "--storage-path", ":memory:", "--log-level", "WARNING"]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                raise MongoSetupError(f"{BINARY} exited {process.returncode}: {' | '.join(tail)}")
            try:
                _ping(url)
                break
            except PyMongoError as exc:
                if time.monotonic() > deadline:
                    raise MongoSetupError(f"{BINARY} did not answer on {url}: {exc}") from exc
                time.sleep(0.1)
        yield BenchMongo(url)
    finally:
        stop_process_group(process, 10.0)


# --- over HTTP, once a berth server using the fixture is up ------------------------------------


def _request(
    url: str, headers: Mapping[str, str], body: bytes | None = None, expect: int = 200
) -> Any:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", **headers} if body else dict(headers),
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if response.status != expect:
                raise MongoSetupError(f"{request.method} {url} answered {response.status}")
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise MongoSetupError(
            f"{request.method} {url} answered {exc.code}: {exc.read()[:300]!r}"
        ) from exc


def seed_submissions(
    base_url: str, headers: Mapping[str, str], count: int = STATS_SUBMISSIONS
) -> None:
    """`count` declarations of STATS_ITEMS items each, POSTed by SEED_THREADS clients."""
    url = f"{base_url}{SUBMISSIONS}"
    body = declaration_body(STATS_ITEMS)

    def post(_: int) -> None:
        _request(url, headers, body, expect=202)

    with ThreadPoolExecutor(SEED_THREADS) as pool:
        list(pool.map(post, range(count)))


@contextlib.contextmanager
def _submissions_of(mongo: BenchMongo, database: str) -> Iterator[Any]:
    from pymongo import MongoClient

    from service.submissions.models import SUBMISSIONS_COLLECTION

    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo.url, serverSelectionTimeoutMS=5000) as client:
        yield client[database][SUBMISSIONS_COLLECTION]


def time_direct_stats(mongo: BenchMongo, database: str, runs: int = 3) -> list[float]:
    """Seconds per run of berth's own stats pipeline, sent straight from pymongo."""
    from datetime import UTC, datetime, timedelta

    from service.core.config import SubmissionSettings
    from service.submissions.repository import stats_pipeline

    since = datetime.now(UTC) - timedelta(days=SubmissionSettings().stats_window_days)
    seconds = []
    with _submissions_of(mongo, database) as submissions:
        for _ in range(runs):
            started = time.perf_counter()
            list(submissions.aggregate(stats_pipeline(None, since)))
            seconds.append(round(time.perf_counter() - started, 4))
    mongo.direct_stats_seconds[database] = seconds
    return seconds
