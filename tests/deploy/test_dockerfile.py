"""The image, checked without a Docker engine: hadolint, then the Dockerfile read as Docker
reads it (tests/deploy/support.py) against what the chart and the service rely on.

The chart runs one image three ways and only changes the arguments, so the ENTRYPOINT/CMD
contract below is an interface: change it here and in the chart together, or not at all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from service.cli import build_parser
from service.core.config import HttpSettings
from tests.deploy.support import (
    DOCKERFILE,
    Instruction,
    Stage,
    context_paths,
    copy_sources,
    dockerfile,
    dockerignore,
    is_excluded,
    parse_dockerfile,
    read_dockerignore,
    tracked_files,
)
from tests.support import REPOSITORY, process_env, require_tool, setting_path

ENTRYPOINT = ["python", "-m"]
SERVICE = ["service", "serve"]
MIGRATIONS = ["service", "migrate"]
OPERATOR = ["berth_operator", "run"]
USER = "10001:10001"
VENV = "/app/.venv"
UV_IMAGE = "ghcr.io/astral-sh/uv"
# Installed in the last stage, any of these means the image carries a toolchain.
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "git", "libc6-dev", "uv", "pip"}
PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))


def stages() -> list[Stage]:
    found = dockerfile()
    assert found, f"no FROM in {DOCKERFILE}"
    return found


def runtime() -> Stage:
    return stages()[-1]


def uv_syncs(stage_name: str = "builder") -> list[Instruction]:
    """The `uv sync` runs of one stage (the builder's make the shipped venv; the dev stage
    re-syncs editable for skaffold's dev profile)."""
    return [
        instruction
        for stage in stages()
        if stage.name == stage_name
        for instruction in stage.all("RUN")
        if re.search(r"\buv sync\b", instruction.body())
    ]


def expanded(stage: Stage, value: str) -> str:
    """`${NAME}` / `$NAME` replaced with the stage's ARG defaults (what a plain build uses)."""
    defaults = dict(arg.body().split("=", 1) for arg in stage.all("ARG") if "=" in arg.body())
    return re.sub(
        r"\$\{?(\w+)\}?", lambda match: defaults.get(match.group(1), match.group(0)), value
    )


def run_python(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


# hadolint -----------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_dockerfile_with_known_faults(tmp_path: Path) -> None:
    """Proves the check above can fail: an unpinned base and an unpinned apt-get install."""
    hadolint = require_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install gcc\n")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest
    assert "DL3008" in result.stdout  # apt-get install without versions


def test_every_ignored_hadolint_rule_says_why() -> None:
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            previous = lines[number - 1].strip() if number else ""
            reason = line.split("hadolint ignore=", 1)[1].partition(" ")[2].strip()
            assert reason or previous.startswith("#"), f"line {number + 1}: no reason given"


# The parser itself ---------------------------------------------------------------------------


def test_the_parser_reads_continuations_comments_and_stages() -> None:
    text = (
        "# syntax=docker/dockerfile:1.7\n"
        "FROM python:3.11.15-slim-bookworm AS builder\n"
        "RUN --mount=type=cache,target=/root/.cache/uv \\\n"
        "    # a comment inside the continuation\n"
        "\n"
        "    uv sync --locked\n"
        "FROM python:3.11.15-slim-bookworm\n"
        'ENV A=1 \\\n    B="two words"\n'
        'CMD ["service", "serve"]\n'
    )
    builder, last = parse_dockerfile(text)
    assert (builder.name, last.name) == ("builder", None)
    (run,) = builder.all("RUN")
    assert run.line == 3
    assert run.flags() == [("mount", "type=cache,target=/root/.cache/uv")]
    assert run.body() == "uv sync --locked"
    assert last.env() == {"A": "1", "B": "two words"}
    cmd = last.last("CMD")
    assert cmd is not None
    assert cmd.exec_form() == ["service", "serve"]


# Stages and base images ----------------------------------------------------------------------


def test_the_image_is_built_in_stages_and_runs_on_the_builders_python() -> None:
    """The venv's interpreter is a symlink into the builder's image: the runtime stage must
    be the same image, or `python` in the venv points at nothing (or another Python)."""
    all_stages = stages()
    assert len(all_stages) >= 2, "a single stage would ship uv and the build cache"
    first_sync = uv_syncs()[0]
    builders = [stage for stage in all_stages[:-1] if first_sync in stage.instructions]
    assert builders, "the venv is not built in an earlier stage"
    assert runtime().base == builders[0].base


def test_the_runtime_stage_is_a_pinned_slim_python_the_project_supports() -> None:
    match = re.fullmatch(
        r"python:(?P<version>\d+\.\d+\.\d+)-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", runtime().base
    )
    assert match, f"{runtime().base}: not python:<major.minor.patch>-slim[-<debian>]"
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert Version(match["version"]) in requires


def test_uv_comes_from_its_pinned_image_in_the_makefiles_series() -> None:
    makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
    series = re.search(r"^UV_VERSION := (.+)$", makefile, re.MULTILINE)
    assert series, "Makefile: UV_VERSION not found"
    sources = [
        value
        for stage in stages()
        for copy in stage.all("COPY")
        for name, value in copy.flags()
        if name == "from" and value.startswith(UV_IMAGE)
    ]
    assert sources, f"uv is not copied from {UV_IMAGE}"
    for source in sources:
        tag = re.fullmatch(
            rf"{re.escape(UV_IMAGE)}:(\d+\.\d+\.\d+)(@sha256:[0-9a-f]{{64}})?", source
        )
        assert tag, f"{source}: not pinned to a version"
        assert Version(tag[1]) in SpecifierSet(series[1].strip()), source


# The environment ------------------------------------------------------------------------------


def test_dependencies_come_from_the_lock_first_and_the_project_after() -> None:
    """One layer per concern: the dependencies (rebuilt only when the lock changes), then
    the project; both from uv.lock as it is (--locked), without the dev group."""
    syncs = uv_syncs()
    assert len(syncs) == 2, [sync.body() for sync in syncs]
    dependencies, project = syncs
    for sync in syncs:
        assert re.search(r"\buv sync\b.*--locked", sync.body()), sync.body()
        assert "--no-dev" in sync.body().split(), sync.body()
        mounts = [value for name, value in sync.flags() if name == "mount"]
        assert "type=cache,target=/root/.cache/uv" in mounts, f"line {sync.line}: no uv cache"
    assert "--no-install-project" in dependencies.body().split()
    assert "--no-install-project" not in project.body().split()
    # The same selection both times: otherwise the second run installs another set.
    assert dependencies.body().replace(" --no-install-project", "") == project.body()
    bound = {
        value.split("source=")[1].split(",")[0]
        for name, value in dependencies.flags()
        if name == "mount" and "type=bind" in value
    }
    assert {"pyproject.toml", "uv.lock"} <= bound
    builder = next(stage for stage in stages() if dependencies in stage.instructions)
    position = builder.instructions.index(dependencies)
    assert all(
        "service" not in instruction.body()
        for instruction in builder.instructions[:position]
        if instruction.keyword == "COPY"
    ), "the source is copied before the dependency layer: every edit reinstalls everything"
    env = builder.env()
    assert env.get("UV_COMPILE_BYTECODE") == "1"
    assert env.get("UV_LINK_MODE") == "copy"


def test_the_project_is_built_from_every_package_it_declares() -> None:
    """hatchling packs what `packages` names and reads `readme`: each must be copied into
    the builder before the project sync, or the wheel (and so the image) lacks it."""
    syncs = uv_syncs()
    builder = next(stage for stage in stages() if syncs[-1] in stage.instructions)
    position = builder.instructions.index(syncs[-1])
    copied = {
        source
        for instruction in builder.instructions[:position]
        if instruction.keyword == "COPY" and "from" not in dict(instruction.flags())
        for source in copy_sources(instruction)
    }
    project = PYPROJECT["project"]
    packages = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    needed = {"pyproject.toml", "uv.lock", project["readme"], *packages}
    assert needed <= copied, f"not copied before the project sync: {sorted(needed - copied)}"


def test_the_last_stage_holds_the_venv_and_nothing_to_build_with() -> None:
    """No uv, no compilers, no dev dependencies, no source tree: only the built venv."""
    last = runtime()
    earlier = {stage.name for stage in stages()[:-1] if stage.name}
    copies = last.all("COPY") + last.all("ADD")
    for copy in copies:
        origin = dict(copy.flags()).get("from")
        assert origin in earlier, f"line {copy.line}: copies from {origin or 'the context'}"
        words = copy.exec_form() or copy.body().split()
        assert words[:-1] == [VENV], f"line {copy.line}: copies {words[:-1]}"
    assert copies, "the last stage copies no venv"
    for run in last.all("RUN"):
        # `=` too: a pinned apt-get install names `gcc=4:12.2.0-3`.
        tokens = set(re.split(r"[\s;&|=]+", run.body()))
        assert not tokens & BUILD_TOOLS, f"line {run.line}: {sorted(tokens & BUILD_TOOLS)}"


def test_the_venv_lands_where_it_was_built_and_comes_first_on_path() -> None:
    """Console scripts carry the venv's path in their shebang: it must not move."""
    builder = next(stage for stage in stages() if stage.name == "builder")
    assert builder.env().get("UV_PROJECT_ENVIRONMENT") == VENV
    (copy,) = runtime().all("COPY")
    assert copy.body().split() == [VENV, VENV]
    assert runtime().env()["PATH"].startswith(f"{VENV}/bin:")


def test_python_writes_no_bytecode_and_buffers_no_output() -> None:
    env = runtime().env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # read-only filesystem in the cluster
    assert env.get("PYTHONUNBUFFERED") == "1"  # log lines reach the collector at once


# User, command, port -------------------------------------------------------------------------


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    """runAsNonRoot can only verify a numeric user; the id must also exist in the image."""
    last = runtime()
    user = last.last("USER")
    assert user is not None, "no USER: the image runs as root"
    assert user.body() == USER
    uid, gid = USER.split(":")
    created = " ".join(run.body() for run in last.all("RUN"))
    assert re.search(rf"groupadd\b[^&;]*--gid[= ]{gid}\b", created), "group not created"
    assert re.search(rf"useradd\b[^&;]*--uid[= ]{uid}\b[^&;]*--gid[= ]{gid}\b", created)
    entrypoint = last.last("ENTRYPOINT")
    assert entrypoint is not None
    assert user.line < entrypoint.line, "USER after ENTRYPOINT still applies, but reads wrong"


def test_the_entrypoint_and_command_are_the_charts_contract() -> None:
    last = runtime()
    entrypoint, cmd = last.last("ENTRYPOINT"), last.last("CMD")
    assert entrypoint is not None
    assert cmd is not None
    # Exec form: python is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert entrypoint.exec_form() == ENTRYPOINT, entrypoint.arguments
    assert cmd.exec_form() == SERVICE, cmd.arguments


@pytest.mark.parametrize("command", [SERVICE, MIGRATIONS, OPERATOR], ids=" ".join)
def test_every_command_of_the_contract_is_a_real_command(
    command: list[str], tmp_path: Path
) -> None:
    """`python -m <module> <command>` exactly as the image runs it (argparse exits 2 on an
    unknown module or command, 0 for --help of a real one)."""
    result = run_python(*ENTRYPOINT[1:], *command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if command[0] == "service":
        assert build_parser().parse_args(command[1:]).command == command[1]


def test_a_misspelled_command_is_refused(tmp_path: Path) -> None:
    """Proves the check above can fail."""
    result = run_python(*ENTRYPOINT[1:], "service", "server", "--help", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_the_service_listens_beyond_loopback_on_the_exposed_port(tmp_path: Path) -> None:
    """Its default host is 127.0.0.1, which nothing outside the container reaches."""
    last = runtime()
    env = {name: expanded(last, value) for name, value in last.env().items()}
    berth = {name: value for name, value in env.items() if name.startswith("BERTH_")}
    assert berth.get("BERTH_HTTP__HOST") == "0.0.0.0"
    for name in berth:
        assert setting_path(name), f"{name}: no such setting (the service ignores it)"
    result = run_python("-m", "service", "check-config", "--show", cwd=tmp_path, **berth)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["http"]["host"] == "0.0.0.0"
    assert shown["commit"] == berth["BERTH_COMMIT"]
    (expose,) = last.all("EXPOSE")
    assert expose.body() == str(HttpSettings().port)


# The build context ---------------------------------------------------------------------------


def test_every_path_copied_from_the_context_exists_and_is_sent() -> None:
    patterns = dockerignore()
    paths = context_paths(stages())
    assert paths, "nothing is read from the build context"
    for instruction, source in paths:
        where = f"line {instruction.line} ({source})"
        path = REPOSITORY / source
        assert path.exists(), f"{where}: not in the repository"
        assert not is_excluded(patterns, source), f"{where}: left out by .dockerignore"
        if path.is_dir():
            files = tracked_files(path)
            assert files, f"{where}: git tracks nothing there"
            left_out = [name for name in files if is_excluded(patterns, name)]
            assert not left_out, f"{where}: .dockerignore leaves out {left_out}"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".tools/bin/uv",
        ".mypy_cache/3.11/cache.db",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        "service/__pycache__/cli.cpython-311.pyc",
        "service/core/config.pyc",
        "tests/conftest.py",
        "docs/tenants.md",
        "bench-results/latest.json",
        "data/berth.db",
        ".env",
        "service/.env",
        "charts/berth/values.yaml",
    ],
)
def test_the_context_leaves_local_state_out(path: str) -> None:
    assert is_excluded(dockerignore(), path)


def test_the_dockerignore_reader_follows_dockers_rules() -> None:
    """The reader the two tests above trust: last match wins, `!` lets back in, a pattern
    matching a directory covers what is inside, `*` does not cross `/`, `**` does."""
    patterns = read_dockerignore("# comment\n*\n!service\n**/__pycache__\n!docs/*.md\n")
    assert not is_excluded(patterns, "service/cli.py")
    assert is_excluded(patterns, "README.md")
    assert is_excluded(patterns, "service/core/__pycache__/x.pyc")
    assert not is_excluded(patterns, "docs/a.md")
    assert is_excluded(patterns, "docs/deep/a.md")
    assert not is_excluded(read_dockerignore("*.md\n"), "docs/a.md")


# Labels --------------------------------------------------------------------------------------


def test_the_image_carries_oci_labels_that_match_the_project() -> None:
    last = runtime()
    labels = {name: expanded(last, value) for name, value in last.labels().items()}
    prefix = "org.opencontainers.image."
    for name in ("title", "description", "source", "licenses", "version", "revision"):
        assert labels.get(prefix + name), f"label {prefix}{name} missing"
    assert labels[prefix + "version"] == PYPROJECT["project"]["version"]
    assert labels[prefix + "licenses"] == PYPROJECT["project"]["license"]


def test_the_dev_stage_keeps_the_sources_editable_for_the_skaffold_sync() -> None:
    """skaffold's dev profile builds `target: dev` and syncs files into /app: there the
    sources must be what Python imports (an editable install), writable by the user."""
    dev = next(stage for stage in stages() if stage.name == "dev")
    (sync,) = uv_syncs("dev")

    assert "--no-editable" not in sync.body().split()
    assert "chown -R 10001:10001 /app" in sync.body()
    assert dev.all("USER")[-1].body() == "10001:10001"
    assert stages()[-1].name == "runtime"  # what `docker build` makes by default


def test_the_image_never_installs_the_test_mongodb_server() -> None:
    """secantusdb (GPL-2.0, beta) is a dev and test tool: the image installs `--no-dev`, and
    what that resolves to from uv.lock leaves it out while the dev set has it."""
    uv = REPOSITORY / ".tools" / "bin" / "uv"
    if not uv.is_file():
        uv = require_tool("uv")

    def exported(*flags: str) -> str:
        result = subprocess.run(
            [str(uv), "export", "--locked", "--no-hashes", "--extra", "tracing", *flags],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return result.stdout

    assert "--no-dev" in DOCKERFILE.read_text(encoding="utf-8")
    assert "secantusdb==" not in exported("--no-dev")
    assert "secantusdb==" in exported()
