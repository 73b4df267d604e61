"""Logs: JSON lines with one shape for our loggers and stdlib ones, and no secrets ever."""

from __future__ import annotations

import io
import logging
import sys

import httpx
import pytest
import structlog

from service.core.config import ObservabilitySettings
from service.core.logging import REDACTED, access_log, configure_logging, get_logger
from tests.support import json_lines

SECRETS = {
    "authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.secret-token-value",
    "cookie": "session=cookie-secret-value",
    "password": "pw-secret-value-123",
}


@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    configure_logging(ObservabilitySettings(log_format="json", log_level="DEBUG"), stream=out)
    return out


def test_lines_have_timestamp_level_logger_and_event(stream: io.StringIO) -> None:
    get_logger("berth.test").info("something_happened", count=3)

    [line] = json_lines(stream.getvalue())
    assert line["event"] == "something_happened"
    assert line["level"] == "info"
    assert line["logger"] == "berth.test"
    assert line["count"] == 3
    assert line["timestamp"].endswith("Z")


def test_stdlib_loggers_share_the_json_format(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("server %s", "started")
    logging.getLogger("sqlalchemy.engine").warning("engine note")

    lines = json_lines(stream.getvalue())
    assert [(line["logger"], line["event"], line["level"]) for line in lines] == [
        ("uvicorn.error", "server started", "warning"),
        ("sqlalchemy.engine", "engine note", "warning"),
    ]


def test_uvicorn_access_log_is_off(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')

    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    "key", ["password", "new_password", "access_token", "refresh_token", "Authorization",
            "cookie", "set-cookie", "jwt_secret", "api_key"],
)  # fmt: skip
def test_secret_fields_are_redacted(stream: io.StringIO, key: str) -> None:
    get_logger("berth.test").info("login", **{key: "s3cr3t-value"}, email="a@example.com")

    [line] = json_lines(stream.getvalue())
    assert line[key] == REDACTED
    assert line["email"] == "a@example.com"
    assert "s3cr3t-value" not in stream.getvalue()


def test_secrets_nested_in_mappings_are_redacted(stream: io.StringIO) -> None:
    get_logger("berth.test").info("call", headers={"Authorization": "Bearer abc", "accept": "x"})

    [line] = json_lines(stream.getvalue())
    assert line["headers"] == {"Authorization": REDACTED, "accept": "x"}


def test_stdlib_extra_fields_are_redacted_too(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.error").warning("x", extra={"password": "pw-in-extra"})

    assert "pw-in-extra" not in stream.getvalue()


def test_console_format_is_readable_text() -> None:
    out = io.StringIO()
    configure_logging(ObservabilitySettings(log_format="console"), stream=out)

    get_logger("berth.test").info("hello_console", answer=42)

    text = out.getvalue()
    assert "hello_console" in text
    assert "answer" in text
    assert not text.lstrip().startswith("{")


def test_level_filters_lower_levels() -> None:
    out = io.StringIO()
    configure_logging(ObservabilitySettings(log_format="json", log_level="WARNING"), stream=out)

    get_logger("berth.test").info("quiet")
    get_logger("berth.test").warning("loud")

    assert [line["event"] for line in json_lines(out.getvalue())] == ["loud"]


async def test_requests_never_log_credentials_headers_or_bodies(
    probe_client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    await probe_client.post(
        "/api/v1/test/items",
        json={"name": SECRETS["password"], "quantity": 0},
        headers={"Authorization": SECRETS["authorization"], "Cookie": SECRETS["cookie"]},
    )
    await probe_client.get(
        "/api/v1/test/boom",
        headers={"Authorization": SECRETS["authorization"], "Cookie": SECRETS["cookie"]},
    )

    output = capsys.readouterr().out
    assert json_lines(output)  # something was logged, and it was all JSON
    for secret in SECRETS.values():
        assert secret not in output
    assert "pw-should-not-appear" not in output
    assert "tok-should-not-appear" not in output


class CountingStdout(io.StringIO):
    """An unbuffered stdout (PYTHONUNBUFFERED=1): each write would be a system call."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_access_lines_on_unbuffered_stdout_are_written_together_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = CountingStdout()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "__stdout__", out)  # the process's own stdout, not a capture
    configure_logging(ObservabilitySettings(log_format="json"))
    try:
        for n in range(100):
            access_log({"status": 200, "n": n})
        assert out.writes == 0  # held: the lifespan's flusher writes them within 0.2 s

        get_logger("berth.test").warning("after_the_requests")  # writes the held lines first
        access_log({"status": 200, "n": 100})
        access_log.flush()
    finally:
        access_log.flush()

    lines = json_lines(out.getvalue())
    assert [line.get("n") for line in lines] == [*range(100), None, 100]
    assert lines[100]["event"] == "after_the_requests"
    assert out.writes <= 4


def test_a_captured_stdout_gets_each_access_line_at_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(ObservabilitySettings(log_format="json"))
    capsys.readouterr()

    access_log({"status": 200})

    [line] = json_lines(capsys.readouterr().out)
    assert line["status"] == 200


def teardown_module() -> None:
    structlog.reset_defaults()
