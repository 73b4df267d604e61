"""Readers for the deployment files, small enough to trust: a Dockerfile parser, Docker's
.dockerignore rules, the Compose file, and the settings an environment variable names.

No Docker engine exists where the tests run, so these files are checked as text: what the
engine would read from them is what these helpers read.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.support import REPOSITORY, require_tool

DOCKERFILE = REPOSITORY / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
COMPOSE_FILE = REPOSITORY / "compose.yaml"


# Dockerfile ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One instruction, its continuation lines joined, with the line it starts on."""

    keyword: str
    arguments: str
    line: int

    def flags(self) -> list[tuple[str, str]]:
        """The leading `--name=value` flags (COPY --from, RUN --mount), in order."""
        return split_flags(self.arguments)[0]

    def body(self) -> str:
        """The arguments after the flags: a command, or sources and a destination."""
        return split_flags(self.arguments)[1]

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction; None for the shell form."""
        body = self.body()
        if not body.startswith("["):
            return None
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return None  # Docker, too, runs a malformed array as a shell command
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            return None
        return value


@dataclass
class Stage:
    """A build stage: its FROM and what follows it up to the next FROM."""

    base: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        """The one that counts: a later USER, CMD or ENTRYPOINT replaces an earlier one."""
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV of this stage (later wins), values unexpanded."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(key_values(instruction.body()))
        return values

    def labels(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("LABEL"):
            values.update(key_values(instruction.body()))
        return values


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction: `\\` continuations joined, comment
    and blank lines dropped (also inside a continuation, as Docker does)."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(part for part in pending if part)))
        pending = []
    if pending:
        lines.append((start, " ".join(part for part in pending if part)))
    return lines


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile. Instructions before the first FROM (global ARGs) are
    dropped: none of the checks here reads them."""
    stages: list[Stage] = []
    for line, logical in logical_lines(text):
        keyword, _, arguments = logical.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = split_flags(arguments)[1].split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, line=line))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, arguments, line))
    return stages


def split_flags(arguments: str) -> tuple[list[tuple[str, str]], str]:
    """`--from=builder /a /b` -> ([("from", "builder")], "/a /b")."""
    flags: list[tuple[str, str]] = []
    rest = arguments
    while match := re.match(r"--([a-z-]+)(?:=(\S*))?\s*", rest):
        flags.append((match.group(1), match.group(2) or ""))
        rest = rest[match.end() :]
    return flags, rest


def key_values(body: str) -> dict[str, str]:
    """ENV / LABEL arguments: `K=V K2="v 2"`, or the old one-pair form `K V`."""
    words = shlex.split(body)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def mount_options(value: str) -> dict[str, str]:
    """`type=bind,source=uv.lock,target=uv.lock` -> a dict (a bare word is `word=""`)."""
    options: dict[str, str] = {}
    for item in value.split(","):
        key, _, option = item.partition("=")
        options[key] = option
    return options


def copy_sources(instruction: Instruction) -> list[str]:
    """The source paths of a COPY/ADD (all but the last word)."""
    words = instruction.exec_form() or shlex.split(instruction.body())
    return words[:-1]


def context_paths(stages: list[Stage]) -> list[tuple[Instruction, str]]:
    """Every path the build reads from the context: sources of COPY/ADD without --from and
    sources of RUN bind mounts without from= (both come from the build context)."""
    paths: list[tuple[Instruction, str]] = []
    for stage in stages:
        for instruction in stage.instructions:
            flags = dict(instruction.flags())
            if instruction.keyword in {"COPY", "ADD"} and "from" not in flags:
                paths += [(instruction, source) for source in copy_sources(instruction)]
            if instruction.keyword == "RUN":
                for name, value in instruction.flags():
                    options = mount_options(value)
                    if name == "mount" and options.get("type") == "bind" and "from" not in options:
                        paths.append((instruction, options.get("source", ".")))
    return paths


def dockerfile() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


# .dockerignore ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IgnorePattern:
    regex: re.Pattern[str]
    negated: bool


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's translation (moby/patternmatcher): `*` and `?` stop at `/`, `**` crosses it,
    `[...]` is a character class, anything else is literal."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out.append(".*" if i >= len(pattern) else "(.*/)?")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.index("]", i + 1)
            out.append(pattern[i : end + 1])
            i = end
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(char))
        i += 1
    out.append("$")
    return re.compile("".join(out))


def read_dockerignore(text: str) -> list[IgnorePattern]:
    patterns: list[IgnorePattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = posixpath.normpath(line[1:].strip() if negated else line)
        patterns.append(IgnorePattern(_pattern_regex(line.lstrip("/") or "."), negated))
    return patterns


def is_excluded(patterns: list[IgnorePattern], path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context.

    As moby's MatchesOrParentMatches: a pattern matches the path or one of its parent
    directories, and the last matching pattern decides (`!` lets the path back in).
    """
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        if any(pattern.regex.match(candidate) for candidate in candidates):
            excluded = not pattern.negated
    return excluded


def dockerignore() -> list[IgnorePattern]:
    return read_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))


def tracked_files(path: Path) -> list[str]:
    """The files git tracks under `path`, relative to the repository: what a fresh checkout
    (CI, a colleague's laptop) would send as context, whatever is lying around here."""
    git = require_tool("git")
    listed = subprocess.run(
        [str(git), "ls-files", "-z", "--", str(path.relative_to(REPOSITORY))],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in listed.stdout.split("\0") if name]


# Compose ---------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return document


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, as the map or the `KEY=value` list Compose accepts."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(str(item).split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}
