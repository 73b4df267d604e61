"""compose.yaml, checked without a Docker engine: against the Compose specification's
schema, and its values against the service they configure (paths, port, settings)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.core.config import HttpSettings, safe_url
from service.main import READY_PATH
from tests.deploy.support import COMPOSE_FILE, compose, dockerfile, environment_of
from tests.support import REPOSITORY, process_env, require_tool, setting_path

MIGRATE_COMMAND = ["service", "migrate"]
BACKENDS = ("postgres", "redis", "mongodb")


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def image_env() -> dict[str, str]:
    """The BERTH_* the image itself sets (the Dockerfile's last stage), ARGs at defaults."""
    last = dockerfile()[-1]
    defaults = dict(arg.body().split("=", 1) for arg in last.all("ARG") if "=" in arg.body())
    return {
        name: re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)
        for name, value in last.env().items()
        if name.startswith("BERTH_")
    }


def check_config(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--show"],
        cwd=cwd,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = require_tool("check-jsonschema")
    return subprocess.run(
        [str(tool), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def healthcheck_code() -> str:
    """The Python the app's healthcheck runs (`CMD python -c <code>`)."""
    test = services()["app"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], f"not `CMD python -c ...`: {test}"
    code: str = test[3]
    return code


def healthcheck_url() -> str:
    urls = re.findall(r"https?://[^'\"\s]+", healthcheck_code())
    assert len(urls) == 1, urls
    url: str = urls[0]
    return url


# The schema -----------------------------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_refuses_a_misspelled_key(tmp_path: Path) -> None:
    """Proves the check above can fail."""
    document = compose()
    app = document["services"]["app"]
    app["healthchek"] = app.pop("healthcheck")
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")
    result = check_jsonschema(broken)
    assert result.returncode != 0
    assert "healthchek" in result.stdout + result.stderr


# Order of start --------------------------------------------------------------------------------


def test_the_app_starts_after_the_migrations_and_healthy_backends() -> None:
    app, migrate = services()["app"], services()["migrate"]
    assert app["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for backend in ("postgres", "redis"):
        assert app["depends_on"][backend]["condition"] == "service_healthy", backend
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_migrations_run_once_from_the_apps_image() -> None:
    app, migrate = services()["app"], services()["migrate"]
    assert migrate["command"] == MIGRATE_COMMAND
    assert migrate["build"] == app["build"], "the migrations must be the app's own"
    assert "image" not in migrate or migrate.get("image") == app.get("image")
    # A restart policy would rerun it forever, and the app would never see "completed".
    assert migrate.get("restart", "no") == "no"


def test_every_backend_is_pinned_and_has_a_healthcheck() -> None:
    for name in BACKENDS:
        service = services()[name]
        tag = service["image"].partition(":")[2]
        assert re.match(r"\d+\.\d+", tag), f"{name}: {service['image']} is not pinned"
        assert service["healthcheck"]["test"], f"{name}: no healthcheck"
    assert services()["mongodb"]["image"].startswith("mongo:7.")


# Paths -----------------------------------------------------------------------------------------


def test_every_host_path_exists() -> None:
    """Build contexts (with their Dockerfile) and bind mounts; named volumes are declared."""
    base = COMPOSE_FILE.parent
    declared = set(compose().get("volumes") or {})
    checked: list[Path] = []
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            spec = {"context": build} if isinstance(build, str) else build
            context = base / spec.get("context", ".")
            assert context.is_dir(), f"{name}: no build context {context}"
            assert (context / spec.get("dockerfile", "Dockerfile")).is_file(), name
            checked.append(context)
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            else:
                source, kind = volume.get("source", ""), volume["type"]
            if kind == "bind":
                path = (base / source).resolve()
                assert path.exists(), f"{name}: bind mount {source} does not exist"
                assert path.is_relative_to(REPOSITORY), f"{name}: {source} is outside the checkout"
                checked.append(path)
            elif kind == "volume":
                assert source in declared, f"{name}: volume {source} is not declared"
    assert checked, "no host path found: the reader is wrong"


# Port and healthcheck ------------------------------------------------------------------------


def test_the_api_is_published_on_loopback_at_the_services_port() -> None:
    """The container listens on the service's default port (the image sets no other)."""
    (port,) = services()["app"]["ports"]
    default = HttpSettings().port
    if isinstance(port, str):  # "127.0.0.1:8000:8000"
        host_ip, published, target = port.rsplit(":", 2)
        port = {"host_ip": host_ip, "published": published, "target": target}
    assert int(port["target"]) == default
    assert int(port["published"]) == default
    assert port["host_ip"] == "127.0.0.1", "the API would be open to the whole network"


def test_the_app_healthcheck_probes_readiness_on_the_services_port() -> None:
    url = urlsplit(healthcheck_url())
    assert url.path == READY_PATH
    assert url.hostname == "127.0.0.1"  # inside the container: the service's own socket
    assert url.port == HttpSettings().port


@contextlib.contextmanager
def readiness_stub(status: list[int], paths: list[str]) -> Iterator[str]:
    """A local HTTP server answering every GET with status[0]; records the paths asked."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status[0])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_app_healthcheck_fails_while_readiness_is_down(tmp_path: Path) -> None:
    """The check's own code, pointed at a stub: 200 is healthy, 503 (a backend down) not."""
    url = urlsplit(healthcheck_url())
    status = [200]
    paths: list[str] = []
    with readiness_stub(status, paths) as stub:
        code = healthcheck_code().replace(f"{url.scheme}://{url.netloc}", stub)
        run = [sys.executable, "-c", code]
        healthy = subprocess.run(run, cwd=tmp_path, capture_output=True, timeout=30)
        status[0] = 503
        down = subprocess.run(run, cwd=tmp_path, capture_output=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr
    assert down.returncode != 0
    assert paths == [READY_PATH, READY_PATH]


# Settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app", "migrate"])
def test_every_berth_variable_names_a_real_setting(name: str) -> None:
    """The settings ignore unknown BERTH_* names: a typo would be silently dropped."""
    env = environment_of(services()[name])
    berth = [key for key in env if key.startswith("BERTH_")]
    assert berth, f"{name}: no BERTH_* settings"
    for key in berth:
        assert setting_path(key), f"{name}: {key} is no setting"


def test_the_app_reaches_mongodb_and_waits_for_it() -> None:
    """Submissions are on in production: the app's MongoDB URL names the compose service, and
    the app starts once that server answers."""
    app = services()["app"]
    url = urlsplit(environment_of(app)["BERTH_MONGO__URL"])
    assert (url.scheme, url.hostname, url.port) == ("mongodb", "mongodb", 27017)
    assert app["depends_on"]["mongodb"] == {"condition": "service_healthy"}


@pytest.mark.parametrize("name", ["app", "migrate"])
def test_the_compose_settings_pass_the_services_own_check(name: str, tmp_path: Path) -> None:
    """`check-config` with the image's and the service's environment, as the container
    would start; production, so a missing database, Redis or real secret fails here."""
    env = {**image_env(), **environment_of(services()[name])}
    result = check_config(env, tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["environment"] == "production"
    assert shown["database"]["url"] == safe_url(env["BERTH_DATABASE__URL"])
    assert shown["database"]["url"].startswith("postgresql+asyncpg://")
    assert shown["redis"]["url"] == safe_url(env["BERTH_REDIS__URL"])
    assert shown["redis"]["required"] is True
    assert shown["http"]["host"] == "0.0.0.0"


def test_the_check_needs_no_reachable_host(tmp_path: Path) -> None:
    """check-config reads settings and opens nothing, so compose's service names need not
    resolve here: shown with names that can never resolve (RFC 6761 `.invalid`)."""
    env = {**image_env(), **environment_of(services()["app"])}
    for key in ("BERTH_DATABASE__URL", "BERTH_REDIS__URL", "BERTH_MONGO__URL"):
        host = urlsplit(env[key]).hostname
        assert host, key
        env[key] = (
            env[key]
            .replace(f"@{host}:", "@nowhere.invalid:")
            .replace(f"//{host}:", "//nowhere.invalid:")
        )
        assert "nowhere.invalid" in env[key], key
    result = check_config(env, tmp_path)
    assert result.returncode == 0, result.stderr


def test_the_check_refuses_what_production_refuses(tmp_path: Path) -> None:
    """Proves the check above can fail: without Redis, production does not start."""
    env = {**image_env(), **environment_of(services()["app"])}
    env.pop("BERTH_REDIS__URL")
    result = check_config(env, tmp_path)
    assert result.returncode == 2
    assert "BERTH_REDIS__URL" in result.stderr
