"""observability/alloy and observability/promtail: berth's real log lines, shipped through each
config's pipeline, reach Loki with their fields extracted, the line's own timestamp, labels of
few values only and the ids as structured metadata; and the two configs say the same.

Real: the service (`python -m service serve`, tracing on to an OTLP receiver of ours, driven
by a sign-up with a client's X-Request-ID, a failed login, a login, a tenant's request, a 404
and a submission its worker processes on the tests' MongoDB-protocol server) and the operator
(`python -m berth_operator` against the real Kubernetes API server, until it is live), and
the lines they write on stdout; the config files, parsed. The field
names come from service/core/logging.py.

Emulated (tests/observability/logs_support.py), because no Alloy, Promtail or Loki binary
can be had here: the container runtime's CRI wrapping of each line, pod discovery's target
for a pod of the chart, and the pipeline engine, stage by stage as Alloy's and Promtail's
sources define each, running what the files say: relabel rules, stages in their order,
JMESPath expressions (the `jmespath` package), names, the timestamp's format.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import pytest

from service.core.logging import (
    ACCESS_EVENT,
    CLIENT,
    DURATION_MS,
    EVENT,
    LEVEL,
    LINE_FIELDS,
    LOG_FIELDS,
    LOW_CARDINALITY_FIELDS,
    PATH,
    REQUEST_ID,
    RESPONSE_BYTES,
    STRUCTURED_METADATA_FIELDS,
    SUBMISSION_ID,
    TENANT,
    TIMESTAMP,
    TRACE_ID,
)
from tests.kube import ApiServer
from tests.mongo_server import MongoServer
from tests.observability.logs_support import (
    CLIENT_REQUEST_ID,
    LABEL_NAME,
    TENANT_SLUG,
    CapturedLog,
    Entry,
    Pod,
    ShipperConfig,
    alloy_config,
    capture_operator_log,
    capture_service_log,
    chart_name,
    cri_line,
    glob_matches,
    promtail_config,
    relabel,
    ship,
)

CONFIGS: dict[str, ShipperConfig] = {"alloy": alloy_config(), "promtail": promtail_config()}
# The labels discovery gives every line (issue 11: namespace, app, container, pod), and the
# one the cri stage adds (stdout or stderr).
DISCOVERY_LABELS = {"namespace", "app", "container", "pod"}
CRI_LABELS = {"stream"}
# Fields that take a value per request, user, client or moment: never a label.
HIGH_CARDINALITY = {
    *STRUCTURED_METADATA_FIELDS, PATH, CLIENT, DURATION_MS, RESPONSE_BYTES, TIMESTAMP,
    "user_id", "account", "filename",
}  # fmt: skip


def berth_pod(container: str, component: str) -> Pod:
    """A pod of the chart: `app.kubernetes.io/name` is the chart's name on all of them."""
    labels = {
        "app.kubernetes.io/name": chart_name(),
        "app.kubernetes.io/instance": "prod",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "berth",
        "pod-template-hash": "5d8c7b9f4",
    }
    return Pod("berth", f"prod-berth-{component}-5d8c7b9f4-x2k8q", container, labels)


PODS = {"api": berth_pod("api", "api"), "operator": berth_pod("operator", "operator")}


@dataclasses.dataclass(frozen=True)
class Shipped:
    """One real line, what it says (its JSON) and what the pipeline made of it."""

    pod: Pod
    event: dict[str, Any]
    cri_time: datetime
    entry: Entry


@pytest.fixture(scope="module")
async def service_log(
    mongo_server: MongoServer, tmp_path_factory: pytest.TempPathFactory
) -> CapturedLog:
    return await capture_service_log(tmp_path_factory.mktemp("service-log"), mongo_server.url)


@pytest.fixture(scope="module")
async def operator_log(
    kube_server: ApiServer, tmp_path_factory: pytest.TempPathFactory
) -> CapturedLog:
    return await capture_operator_log(kube_server, tmp_path_factory.mktemp("operator-log"))


@pytest.fixture(scope="module")
def captured(service_log: CapturedLog, operator_log: CapturedLog) -> list[CapturedLog]:
    return [service_log, operator_log]


def shipped_through(config: ShipperConfig, logs: list[CapturedLog]) -> list[Shipped]:
    """Every captured line as the runtime writes it to the pod's log file, then shipped."""
    result = []
    for log in logs:
        pod = PODS[log.container]
        for line in log.lines:
            at = datetime.now().astimezone()
            entry = ship(config, pod.target(), pod.log_file, cri_line(line, at=at))
            result.append(Shipped(pod, json.loads(line), at, entry))
    return result


def epoch_ns(text: str) -> int:
    """The service's RFC 3339 text as nanoseconds, read by Python (not the emulator)."""
    moment = datetime.fromisoformat(text)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@pytest.fixture(params=sorted(CONFIGS), ids=sorted(CONFIGS))
def config(request: pytest.FixtureRequest) -> ShipperConfig:
    return CONFIGS[request.param]


@pytest.fixture
def shipped(config: ShipperConfig, captured: list[CapturedLog]) -> list[Shipped]:
    return shipped_through(config, captured)


def test_alloy_and_promtail_discover_relabel_process_and_push_alike() -> None:
    alloy, promtail = CONFIGS["alloy"], CONFIGS["promtail"]

    assert alloy.role == promtail.role == "pod"
    assert alloy.relabel_rules == promtail.relabel_rules
    assert alloy.stages == promtail.stages
    assert [stage.kind for stage in alloy.stages] == [
        "cri", "json", "labels", "structured_metadata", "timestamp", "label_drop",
    ]  # fmt: skip
    # The endpoint is the deployment's to give, from the environment, in both.
    assert "LOKI_URL" in alloy.push_url
    assert promtail.push_url == "${LOKI_URL}"


def test_the_json_stage_extracts_exactly_the_services_log_fields(config: ShipperConfig) -> None:
    assert set(config.stage("json")["expressions"]) == set(LOG_FIELDS)


def test_every_line_of_the_service_and_the_operator_is_json_with_the_common_fields(
    captured: list[CapturedLog],
) -> None:
    for log in captured:
        assert log.lines, f"no line from the {log.container}"
        for event in log.events():
            assert set(LINE_FIELDS) <= set(event), event
    events = {event[EVENT] for log in captured for event in log.events()}
    assert {ACCESS_EVENT, "login_failed", "operator_starting"} <= events


def test_every_log_field_is_extracted_from_the_real_lines_that_carry_it(
    shipped: list[Shipped],
) -> None:
    for field in LOG_FIELDS:
        carriers = [s for s in shipped if field in s.event]
        assert carriers, f"no captured line carries {field}: the capture must cover it"
        for line in carriers:
            assert line.entry.extracted[field] == line.event[field], (field, line.event)


def test_the_timestamp_is_the_lines_own_read_in_the_configured_format(
    config: ShipperConfig, shipped: list[Shipped]
) -> None:
    assert config.stage("timestamp")["source"] == TIMESTAMP

    for line in shipped:
        assert line.entry.timestamp_ns == epoch_ns(line.event[TIMESTAMP]), line.event
        # Not the runtime's time: the line was written before the runtime's "now" here.
        assert line.entry.timestamp_ns < epoch_ns(line.cri_time.isoformat())


def test_labels_are_the_discovery_ones_the_stream_and_the_low_cardinality_fields_only(
    config: ShipperConfig, shipped: list[Shipped]
) -> None:
    assert set(config.stage("labels")) == set(LOW_CARDINALITY_FIELDS)

    for line in shipped:
        low = {field for field in LOW_CARDINALITY_FIELDS if line.event.get(field)}
        assert set(line.entry.labels) == DISCOVERY_LABELS | CRI_LABELS | low, line.entry
        assert all(LABEL_NAME.match(name) for name in line.entry.labels)
        assert line.entry.labels[LEVEL] == line.event[LEVEL]
        assert line.entry.labels == {
            "namespace": line.pod.namespace,
            "app": chart_name(),
            "container": line.pod.container,
            "pod": line.pod.name,
            "stream": "stdout",
            **{field: line.event[field] for field in low},
        }


def test_no_id_user_path_client_or_file_becomes_a_label(shipped: list[Shipped]) -> None:
    for line in shipped:
        assert not set(line.entry.labels) & HIGH_CARDINALITY, line.entry.labels
        values = {str(line.event[f]) for f in HIGH_CARDINALITY if line.event.get(f)}
        assert not values & set(line.entry.labels.values()), line.entry.labels


def test_structured_metadata_holds_the_request_trace_span_and_tenant(
    config: ShipperConfig, shipped: list[Shipped]
) -> None:
    assert set(config.stage("structured_metadata")) == set(STRUCTURED_METADATA_FIELDS)

    for line in shipped:
        expected = {f: str(line.event[f]) for f in STRUCTURED_METADATA_FIELDS if line.event.get(f)}
        assert line.entry.structured_metadata == expected
        assert not set(line.entry.structured_metadata) & set(line.entry.labels)
        assert all(LABEL_NAME.match(name) for name in line.entry.structured_metadata)
    metadata = [line.entry.structured_metadata for line in shipped]
    access = [s.entry.structured_metadata for s in shipped if s.event[EVENT] == ACCESS_EVENT]
    assert len(access) >= 5
    assert all(REQUEST_ID in m and TRACE_ID in m for m in access), access
    assert any(m.get(REQUEST_ID) == CLIENT_REQUEST_ID for m in access)
    assert any(m.get(TENANT) == TENANT_SLUG for m in metadata)
    # The worker's lines: one submission's attempts, found by its id, in its tenant.
    assert any(m.get(SUBMISSION_ID) and m.get(TENANT) == TENANT_SLUG for m in metadata)


def test_only_the_charts_pods_are_shipped_each_from_its_own_container_files(
    config: ShipperConfig,
) -> None:
    other = Pod("berth", "postgres-0", "postgres", {"app.kubernetes.io/name": "postgresql"})
    unlabelled = Pod("berth", "debug", "shell", {})

    assert relabel(other.target(), config.relabel_rules) is None
    assert relabel(unlabelled.target(), config.relabel_rules) is None
    for pod in PODS.values():
        kept = relabel(pod.target(), config.relabel_rules)
        assert kept is not None
        assert glob_matches(pod.log_file, kept["__path__"])
        restarted = pod.log_file.replace("/0.log", "/1.log")
        assert glob_matches(restarted, kept["__path__"])
        sidecar = pod.log_file.replace(f"/{pod.container}/", "/wait-for-schema/")
        assert not glob_matches(sidecar, kept["__path__"])


def test_a_line_that_is_not_json_is_shipped_as_it_is_with_the_discovery_labels(
    config: ShipperConfig,
) -> None:
    pod = PODS["api"]
    text = "Traceback (most recent call last):"

    entry = ship(config, pod.target(), pod.log_file, cri_line(text, stream="stderr"))

    assert entry.line == text
    assert set(entry.labels) == DISCOVERY_LABELS | CRI_LABELS
    assert entry.labels["stream"] == "stderr"
    assert entry.structured_metadata == {}
