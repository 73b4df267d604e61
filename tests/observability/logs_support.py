"""The log pipelines' test machinery: the shippers' configs read into one shape, the part of
their pipeline engine the configs use, emulated, and the real log lines of berth.

No Alloy, Promtail or Loki binary can be had on these machines, so the engine is emulated
here, stage by stage, as Alloy's and Promtail's sources define each stage (cited at each);
what it runs is read from the config files, never retyped: the relabel rules, the stages in
their order, the JMESPath expressions (evaluated by the `jmespath` package), the label and
metadata names, the timestamp's source and format. A stage the emulator does not know fails
the test instead of being skipped. The lines are real: the service and the operator run as
processes and their stdout is what goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jmespath  # type: ignore[import-untyped]  # no stubs; three calls, typed below
import yaml
from berth_operator.app import LIVENESS_PATH
from berth_operator.config import POD_NAMESPACE_ENV, operator_env_name

from service.core.config import TenantSettings, env_name
from service.core.http import API_PREFIX
from service.db import migrate
from service.submissions.schemas import SubmissionStatus
from service.tenants.provisioning import create_tenant
from tests.kube import ApiServer, kubectl
from tests.observability.support import OBSERVABILITY_DIR
from tests.service.submissions.factories import declaration
from tests.support import (
    FAST_ARGON2,
    REPOSITORY,
    TEST_PASSWORD,
    OtlpReceiver,
    Spawned,
    free_port,
    process_env,
    wait_until_live,
)

ALLOY_CONFIG = OBSERVABILITY_DIR / "alloy" / "config.alloy"
PROMTAIL_CONFIG = OBSERVABILITY_DIR / "promtail" / "config.yaml"
CHART = REPOSITORY / "charts" / "berth" / "Chart.yaml"

# --- Alloy's configuration syntax: the blocks, attributes and values the config uses ------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*|/\*.*?\*/)
    |(?P<string>"(?:[^"\\]|\\.)*")
    |(?P<raw>`[^`]*`)
    |(?P<number>-?\d+(?:\.\d+)?)
    |(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    |(?P<punct>[{}\[\](),=+])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


@dataclasses.dataclass(frozen=True)
class Expression:
    """A value Alloy computes when it runs (`sys.env("LOKI_URL")`, a component's export)."""

    text: str


@dataclasses.dataclass
class Block:
    """`name "label" { attributes and blocks }`, the blocks in the order written."""

    name: str
    label: str | None = None
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    blocks: list[Block] = dataclasses.field(default_factory=list)

    def children(self, name: str) -> list[Block]:
        return [block for block in self.blocks if block.name == name]

    def child(self, name: str, label: str | None = None) -> Block:
        found = [b for b in self.children(name) if label is None or b.label == label]
        assert len(found) == 1, f"{len(found)} blocks {name} {label or ''} in {self.name}"
        return found[0]


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"Alloy syntax not understood at {text[position : position + 40]!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
    return tokens


class _Parser:
    """Recursive descent over Alloy's grammar: body = (attribute | block)*."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.at + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if value is not None and token[1] != value:
            raise ValueError(f"expected {value!r}, found {token[1]!r}")
        self.at += 1
        return token

    def body(self, into: Block, closing: str | None) -> Block:
        while self.peek()[1] != (closing or "") and self.peek()[0] != "end":
            kind, name = self.take()
            assert kind == "name", f"a block or attribute name, not {name!r}"
            if self.peek()[1] == "=":
                self.take("=")
                into.attributes[name] = self.value()
                continue
            label = _string(self.take()[1]) if self.peek()[0] == "string" else None
            self.take("{")
            into.blocks.append(self.body(Block(name, label), "}"))
            self.take("}")
        return into

    def value(self) -> Any:
        start, first = self.at, self.term()
        if self.peek()[1] != "+":
            return first
        while self.peek()[1] == "+":
            self.take("+")
            self.term()
        return Expression(" ".join(token for _, token in self.tokens[start : self.at]))

    def term(self) -> Any:
        kind, token = self.take()
        if kind in ("string", "raw"):
            return _string(token)
        if kind == "number":
            return float(token) if "." in token else int(token)
        if token == "[":
            return self.sequence("]", self.value)
        if token == "{":
            return dict(self.sequence("}", self.field))
        if kind == "name" and token in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[token]
        if kind == "name" and self.peek()[1] == "(":
            self.take("(")
            arguments = self.sequence(")", self.value)
            return Expression(f"{token}({', '.join(map(repr, arguments))})")
        assert kind == "name", f"a value, not {token!r}"
        return Expression(token)

    def field(self) -> tuple[str, Any]:
        kind, key = self.take()
        key = _string(key) if kind == "string" else key
        self.take("=")
        return key, self.value()

    def sequence(self, closing: str, item: Any) -> list[Any]:
        items = []
        while self.peek()[1] != closing:
            items.append(item())
            if self.peek()[1] == ",":
                self.take(",")
        self.take(closing)
        return items


def _string(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), token[1:-1])


def parse_alloy(text: str) -> Block:
    """The file as one root block holding its components."""
    return _Parser(text).body(Block("root"), None)


# --- The two configs in one shape ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RelabelRule:
    """A Prometheus relabel rule, with the defaults both agents give an omitted field."""

    source_labels: tuple[str, ...] = ()
    separator: str = ";"
    regex: str = "(.*)"
    target_label: str | None = None
    replacement: str = "$1"
    action: str = "replace"

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> RelabelRule:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        assert not unknown, f"relabel fields the emulator does not know: {unknown}"
        values: dict[str, Any] = {
            k: tuple(v) if k == "source_labels" else v for k, v in fields.items()
        }
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage: its kind and its settings, named as both agents name them."""

    kind: str
    settings: Any


@dataclasses.dataclass(frozen=True)
class ShipperConfig:
    """What a log shipper's config says: which pods, which labels, which stages."""

    role: str
    relabel_rules: tuple[RelabelRule, ...]
    stages: tuple[Stage, ...]
    push_url: str  # as written: an expression of the environment

    def stage(self, kind: str) -> Any:
        found = [stage.settings for stage in self.stages if stage.kind == kind]
        assert len(found) == 1, f"{len(found)} {kind} stages"
        return found[0]


# Promtail's and Alloy's spellings of one stage kind.
_STAGE_KINDS = {"labeldrop": "label_drop"}


def _named(mapping: Mapping[str, str | None]) -> dict[str, str]:
    """A stage's {name: source} map; an empty source is the name itself (both agents)."""
    return {name: source or name for name, source in mapping.items()}


def _stage(kind: str, settings: Any) -> Stage:
    kind = _STAGE_KINDS.get(kind, kind)
    if kind == "json":
        settings = {**settings, "expressions": _named(settings["expressions"])}
    elif kind in ("labels", "structured_metadata"):
        settings = _named(settings.get("values", settings))
    elif kind == "label_drop":
        settings = tuple(settings.get("values", []) if isinstance(settings, dict) else settings)
    return Stage(kind, settings or {})


def _referred(root: Block, reference: Any, export: str) -> Block:
    """The component an expression such as `loki.process.berth.receiver` names."""
    assert isinstance(reference, Expression), reference
    *name, label, exported = reference.text.split(".")
    assert exported == export, f"{reference.text}: not the component's {export}"
    return root.child(".".join(name), label)


def alloy_config(path: Path = ALLOY_CONFIG) -> ShipperConfig:
    """Discovery, relabel rules, stages and endpoint, followed from component to component
    as the config wires them: what is not wired into the chain is not read."""
    root = parse_alloy(path.read_text())
    source = root.child("loki.source.file")
    files = _referred(root, source.attributes["targets"], "targets")
    relabel = _referred(root, files.attributes["path_targets"], "output")
    kubernetes = _referred(root, relabel.attributes["targets"], "targets")
    (receiver,) = source.attributes["forward_to"]
    process = _referred(root, receiver, "receiver")
    (write,) = process.attributes["forward_to"]
    endpoint = _referred(root, write, "receiver").child("endpoint").attributes["url"]
    stages = tuple(
        _stage(block.name.removeprefix("stage."), block.attributes) for block in process.blocks
    )
    rules = tuple(RelabelRule.of(rule.attributes) for rule in relabel.children("rule"))
    url = endpoint.text if isinstance(endpoint, Expression) else str(endpoint)
    return ShipperConfig(kubernetes.attributes["role"], rules, stages, url)


def promtail_config(path: Path = PROMTAIL_CONFIG) -> ShipperConfig:
    config = yaml.safe_load(path.read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    stages = tuple(_stage(*next(iter(stage.items()))) for stage in job["pipeline_stages"])
    rules = tuple(RelabelRule.of(rule) for rule in job["relabel_configs"])
    (client,) = config["clients"]
    return ShipperConfig(discovery["role"], rules, stages, client["url"])


def chart_name() -> str:
    """The chart's name: what `app.kubernetes.io/name` is on every pod it makes."""
    name: str = yaml.safe_load(CHART.read_text())["name"]
    return name


# --- The engine, emulated -----------------------------------------------------------------

# Promtail's cri stage (clients/pkg/logentry/stages/extensions.go in grafana/loki): a regex,
# then the stream label, the time as the timestamp (RFC3339Nano) and the content as the line.
# Alloy parses the same four fields by hand (loki/process/stages/cri/parse.go) to the same
# effect. The engine's constant, not the config's: it is not written in either file.
# (Python wants the flag first: `(?s)^` is Go's `^(?s)`.)
CRI_PATTERN = re.compile(
    r"(?s)^(?P<time>\S+?) (?P<stream>stdout|stderr) (?P<flags>\S+?) (?P<content>.*)$"
)
# Loki's label and structured-metadata names (Prometheus's label name rule).
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Go's time layouts by the names the timestamp stage takes, as what time.Parse accepts: when
# parsing, Go takes a fraction of up to nine digits, or none, after the seconds.
_RFC3339 = r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
GO_LAYOUTS = {"RFC3339": re.compile(_RFC3339), "RFC3339Nano": re.compile(_RFC3339)}


def go_parse_time(layout: str, value: str) -> int:
    """Nanoseconds since the epoch, as Go's time.Parse(layout, value) reads them."""
    match = GO_LAYOUTS[layout].match(value)
    if match is None:
        raise ValueError(f"{value!r} does not parse as Go's {layout}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = "+00:00" if zone == "Z" else zone
    whole = datetime.fromisoformat(f"{year}-{month}-{day}T{hour}:{minute}:{second}{offset}")
    return int(whole.timestamp()) * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def glob_matches(path: str, pattern: str) -> bool:
    """A doublestar glob as local.file_match and Promtail use it: `*` stops at a slash."""
    parts = (re.escape(part) for part in pattern.split("*"))
    return re.fullmatch("[^/]*".join(parts), path) is not None


def _go_replacement(replacement: str) -> str:
    """`$1` / `${1}` (Go's regexp.Expand) as Python's `\\g<1>`."""
    return re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", replacement)


def relabel(target: Mapping[str, str], rules: tuple[RelabelRule, ...]) -> dict[str, str] | None:
    """Prometheus relabelling (the actions the configs use); None when the target is dropped."""
    labels = dict(target)
    for rule in rules:
        value = rule.separator.join(labels.get(name, "") for name in rule.source_labels)
        match = re.fullmatch(rule.regex, value)
        if rule.action == "keep" and match is None:
            return None
        if rule.action == "drop" and match is not None:
            return None
        if rule.action == "replace" and match is not None:
            assert rule.target_label is not None
            labels[rule.target_label] = match.expand(_go_replacement(rule.replacement))
        if rule.action not in ("keep", "drop", "replace"):
            raise AssertionError(f"relabel action the emulator does not know: {rule.action}")
    return labels


@dataclasses.dataclass
class Entry:
    """A log entry on its way through loki.process: Alloy's and Promtail's `Entry`."""

    line: str
    labels: dict[str, str]
    timestamp_ns: int
    extracted: dict[str, Any] = dataclasses.field(default_factory=dict)
    structured_metadata: dict[str, str] = dataclasses.field(default_factory=dict)


def _text(value: Any) -> str | None:
    """An extracted value as a label value (Go's getString); None/"" sets nothing."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cri(entry: Entry, _: Any) -> None:
    match = CRI_PATTERN.match(entry.line)
    if match is None:
        return
    entry.extracted.update(match.groupdict())
    entry.labels["stream"] = match["stream"]
    entry.timestamp_ns = go_parse_time("RFC3339Nano", match["time"])
    entry.line = match["content"]


def _json(entry: Entry, settings: Mapping[str, Any]) -> None:
    try:
        data = json.loads(entry.line)
    except ValueError:
        return  # malformed: the line goes on unparsed (drop_malformed is off)
    for name, expression in settings["expressions"].items():
        entry.extracted[name] = jmespath.search(expression, data)


def _labels(entry: Entry, settings: Mapping[str, str]) -> None:
    for name, source in settings.items():
        value = _text(entry.extracted.get(source))
        if value is not None:
            entry.labels[name] = value


def _structured_metadata(entry: Entry, settings: Mapping[str, str]) -> None:
    for name, source in settings.items():
        value = _text(entry.extracted.get(source))
        if value is not None:
            entry.structured_metadata[name] = value


def _timestamp(entry: Entry, settings: Mapping[str, str]) -> None:
    value = _text(entry.extracted.get(settings["source"]))
    if value is not None:  # absent: the runtime's time stays (action_on_failure "fudge")
        entry.timestamp_ns = go_parse_time(settings["format"], value)


def _label_drop(entry: Entry, settings: tuple[str, ...]) -> None:
    for name in settings:
        entry.labels.pop(name, None)


_STAGES: dict[str, Callable[[Entry, Any], None]] = {
    "cri": _cri,
    "json": _json,
    "labels": _labels,
    "structured_metadata": _structured_metadata,
    "timestamp": _timestamp,
    "label_drop": _label_drop,
}


def ship(config: ShipperConfig, target: Mapping[str, str], log_file: str, raw: str) -> Entry:
    """One line of `log_file`, read for the discovered `target`, through the config's
    relabelling (as loki.source.file / Promtail's file target label it) and its stages."""
    labels = relabel(target, config.relabel_rules)
    assert labels is not None, f"the target was dropped: {target}"
    assert glob_matches(log_file, labels["__path__"]), (log_file, labels["__path__"])
    # Labels beginning with "__" never reach Loki; the file source adds the file's name.
    public = {k: v for k, v in labels.items() if not k.startswith("__")}
    entry = Entry(raw, {**public, "filename": log_file}, time.time_ns())
    for stage in config.stages:
        if stage.kind not in _STAGES:
            raise AssertionError(f"a {stage.kind} stage: the emulator does not know it")
        _STAGES[stage.kind](entry, stage.settings)
    return entry


# --- What the kubelet and the container runtime do ----------------------------------------


@dataclasses.dataclass(frozen=True)
class Pod:
    """A pod as Kubernetes pod discovery describes one of its containers."""

    namespace: str
    name: str
    container: str
    labels: Mapping[str, str]
    uid: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))

    def target(self) -> dict[str, str]:
        """The target discovery.kubernetes / kubernetes_sd_configs (role pod) give."""
        target = {
            "__address__": "10.1.2.3:8000",
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_pod_name": self.name,
            "__meta_kubernetes_pod_uid": self.uid,
            "__meta_kubernetes_pod_container_name": self.container,
            "__meta_kubernetes_pod_container_init": "false",
            "__meta_kubernetes_pod_ip": "10.1.2.3",
            "__meta_kubernetes_pod_node_name": "node-1",
            "__meta_kubernetes_pod_phase": "Running",
        }
        for key, value in self.labels.items():
            name = re.sub(r"[^a-zA-Z0-9_]", "_", key)  # as Prometheus sanitises label names
            target[f"__meta_kubernetes_pod_label_{name}"] = value
            target[f"__meta_kubernetes_pod_labelpresent_{name}"] = "true"
        return target

    @property
    def log_file(self) -> str:
        """Where the kubelet keeps this container's log (its first run)."""
        return f"/var/log/pods/{self.namespace}_{self.name}_{self.uid}/{self.container}/0.log"


def cri_line(line: str, stream: str = "stdout", at: datetime | None = None) -> str:
    """`line` as containerd/CRI-O write it to the log file: time, stream, F (full), line."""
    moment = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return f"{moment}123Z {stream} F {line}"


# --- berth's real log lines ---------------------------------------------------------------


def stdout_lines(process: Spawned) -> list[str]:
    return [line for line in process.stdout().splitlines() if line.strip()]


async def wait_for_http(url: str, process: Spawned, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            assert process.running(), process.describe()
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not answering within {timeout} s: {process.describe()}")


async def stop(process: Spawned, timeout: float = 20.0) -> None:
    """SIGTERM, as the kubelet stops a container: its last lines are written on the way out
    (the service flushes its buffered access log then)."""
    if process.running():
        process.signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.process.wait, timeout)
        finally:
            process.kill()


def python_process(args: list[str], env: dict[str, str], cwd: Path, name: str) -> Spawned:
    return Spawned([sys.executable, *args], env=env, cwd=cwd, name=name)


# --- berth's real lines: the service and the operator as their containers run them ------

TENANT_SLUG = "acme"
# The request id a client sends (X-Request-ID): the lines of its request must carry it.
CLIENT_REQUEST_ID = "logs-pipeline-test-0001"
SUBMISSIONS = "/submissions"
# A submission is settled (the worker's lines written) once it is neither of these.
UNSETTLED = {SubmissionStatus.PENDING, SubmissionStatus.PROCESSING}
SUBMISSION_SETTLE_SECONDS = 20.0


@dataclasses.dataclass(frozen=True)
class CapturedLog:
    """What a process wrote on stdout, and which container of berth's pods it stands for."""

    container: str
    lines: list[str]

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def _service_env(workdir: Path, port: int, otlp_endpoint: str, mongo_url: str) -> dict[str, str]:
    return process_env(
        BERTH_ENVIRONMENT="test",
        # Submissions on a MongoDB server of the tests, in databases of this capture's own:
        # the worker's lines carry the submission it processes.
        **{
            env_name("mongo", "url"): mongo_url,
            env_name("mongo", "database_prefix"): f"logs{uuid.uuid4().hex[:8]}_",
        },
        BERTH_DATABASE__URL=f"sqlite+aiosqlite:///{workdir / 'berth.db'}",
        BERTH_HTTP__PORT=str(port),
        BERTH_OBSERVABILITY__LOG_FORMAT="json",
        BERTH_RATE_LIMITS__ENABLED="false",
        BERTH_TENANTS__REGISTRY_DIR=str(workdir / "registry"),
        BERTH_TENANTS__SQLITE_DIR=str(workdir / "tenant-dbs"),
        # Tracing on (to a real OTLP receiver of ours): the lines then carry trace and span.
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
        **{f"BERTH_AUTH__{key.upper()}": str(value) for key, value in FAST_ARGON2.items()},
    )


async def _drive(base_url: str) -> None:
    """A sign-up (with the client's X-Request-ID), a failed and a good login, a tenant's
    request (its lines carry the tenant) and a 404."""
    api = f"{base_url}{API_PREFIX}"
    email, wrong = "logs@example.com", "not the password at all"
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        signup = {"tenant": TENANT_SLUG, "email": email, "password": TEST_PASSWORD}
        registered = await client.post(
            "/auth/register", json=signup, headers={"X-Request-ID": CLIENT_REQUEST_ID}
        )
        assert registered.status_code == 201, registered.text
        refused = await client.post("/auth/login", json={"email": email, "password": wrong})
        assert refused.status_code == 401, refused.text
        login = await client.post("/auth/login", json={"email": email, "password": TEST_PASSWORD})
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        articles = await client.get("/articles", headers=bearer)
        assert articles.status_code == 200, articles.text
        missing = await client.get("/no-such-route")
        assert missing.status_code == 404, missing.text
        await _submit_and_wait(client, bearer)


async def _submit_and_wait(client: httpx.AsyncClient, bearer: dict[str, str]) -> None:
    """A declaration, then its status until the worker has settled it (its lines carry the
    submission's id)."""
    accepted = await client.post(SUBMISSIONS, json=declaration(), headers=bearer)
    assert accepted.status_code == 202, accepted.text
    location = f"{SUBMISSIONS}/{accepted.json()['id']}"
    deadline = time.monotonic() + SUBMISSION_SETTLE_SECONDS
    while time.monotonic() < deadline:
        current = await client.get(location, headers=bearer)
        assert current.status_code == 200, current.text
        if current.json()["status"] not in UNSETTLED:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker did not settle {location}: {current.json()['status']}")


async def capture_service_log(workdir: Path, mongo_url: str) -> CapturedLog:
    """`python -m service serve` on a migrated SQLite control plane with one tenant and its
    submissions on `mongo_url`, driven by real requests, then stopped with SIGTERM (which
    flushes its access log)."""
    port = free_port()
    with OtlpReceiver() as receiver:
        env = _service_env(workdir, port, receiver.endpoint, mongo_url)
        await migrate.upgrade(env["BERTH_DATABASE__URL"])
        tenants = TenantSettings(
            registry_dir=workdir / "registry", sqlite_dir=workdir / "tenant-dbs"
        )
        await create_tenant(tenants, TENANT_SLUG, self_signup=True)
        server = python_process(["-m", "service", "serve"], env, workdir, "service")
        try:
            await wait_until_live(f"http://127.0.0.1:{port}", server)
            await _drive(f"http://127.0.0.1:{port}")
        finally:
            await stop(server)
    return CapturedLog("api", stdout_lines(server))


async def capture_operator_log(kube_server: ApiServer, workdir: Path) -> CapturedLog:
    """`python -m berth_operator` against the real Kubernetes API server, in a namespace of
    its own, until it is live; then stopped with SIGTERM. Its start-up and shutdown lines
    are enough here: they are written by the same logging as its reconciles'."""
    namespace = f"logs-{uuid.uuid4().hex[:8]}"
    kubectl(kube_server, "create", "namespace", namespace)
    liveness = free_port()
    env = process_env(
        KUBECONFIG=str(kube_server.kubeconfig),
        **{
            POD_NAMESPACE_ENV: namespace,
            operator_env_name("namespaces"): namespace,
            operator_env_name("log", "log_format"): "json",
            operator_env_name("liveness_port"): str(liveness),
            operator_env_name("metrics_port"): str(free_port()),
            operator_env_name("bind_host"): "127.0.0.1",
        },
    )
    operator = python_process(["-m", "berth_operator"], env, workdir, "operator")
    try:
        await wait_for_http(f"http://127.0.0.1:{liveness}{LIVENESS_PATH}", operator)
    finally:
        await stop(operator)
        kubectl(kube_server, "delete", "namespace", namespace, "--wait=false")
    return CapturedLog("operator", stdout_lines(operator))
