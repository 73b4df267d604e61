"""observability/prometheus/scrape: both scrape configs pass `promtool check config`, and the
Kubernetes one's relabelling, run by a real Prometheus server, keeps exactly the berth pods'
metrics ports and gives their series the labels the dashboards and rules select on.

What is real: promtool and the Prometheus server (Debian's), scraping a real HTTP endpoint
this test serves. What is not: Kubernetes pod discovery, which Debian's build lacks; the test
puts in its place static targets carrying the `__meta_kubernetes_*` labels pod discovery
gives a pod's container port (the relabelling sees the same labels either way).
"""

from __future__ import annotations

import fnmatch
import http.server
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.observability.prometheus_support import (
    KUBERNETES_CONFIG,
    STATIC_CONFIG,
    Prometheus,
    for_test,
    load_config,
    poll,
    start_prometheus,
    wait_ready,
    with_discovery_replaced,
    write_config,
)
from tests.observability.support import RULE_FILES, promtool

META = "__meta_kubernetes_"
NAMESPACE = "shop"


class MetricsEndpoint:
    """A real HTTP endpoint on loopback answering every GET with one metric."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"# TYPE berth_scrape_check gauge\nberth_scrape_check 1\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def discovered_port(
    port: int,
    *,
    pod: str,
    container: str,
    port_name: str,
    name: str = "berth",
    component: str = "api",
    phase: str = "Running",
) -> dict[str, Any]:
    """A target as pod discovery gives one container port of a pod (address on loopback)."""
    return {
        "targets": [f"127.0.0.1:{port}"],
        "labels": {
            f"{META}namespace": NAMESPACE,
            f"{META}pod_name": pod,
            f"{META}pod_phase": phase,
            f"{META}pod_ready": "true",
            f"{META}pod_label_app_kubernetes_io_name": name,
            f"{META}pod_labelpresent_app_kubernetes_io_name": "true",
            f"{META}pod_label_app_kubernetes_io_component": component,
            f"{META}pod_container_name": container,
            f"{META}pod_container_port_name": port_name,
            f"{META}pod_container_port_number": str(port),
            f"{META}pod_container_port_protocol": "TCP",
            f"{META}pod_container_init": "false",
        },
    }  # fmt: skip


def cluster(metrics: int, other: int) -> list[dict[str, Any]]:
    """The berth chart's two pods with all their ports, another app's pod with a port named
    `metrics`, and a finished pod of berth's: only the first two metrics ports are berth's."""
    api, operator = "berth-6c9f7-x2x4q", "berth-operator-5d8b9-k7r2m"
    return [
        discovered_port(metrics, pod=api, container="api", port_name="metrics"),
        discovered_port(other, pod=api, container="api", port_name="http"),
        discovered_port(metrics, pod=operator, container="operator", port_name="metrics",
                        component="operator"),
        discovered_port(other, pod=operator, container="operator", port_name="liveness",
                        component="operator"),
        discovered_port(metrics, pod="shop-web-0", container="web", port_name="metrics",
                        name="shop-web"),
        discovered_port(metrics, pod="berth-6c9f7-old01", container="api", port_name="metrics",
                        phase="Failed"),
    ]  # fmt: skip


def kubernetes_copy(directory: Path, metrics: int, other: int, interval: str = "1s") -> Path:
    """kubernetes.yaml with static targets in place of pod discovery and the repository's
    rule files (the original names where a pod would mount them)."""
    config = with_discovery_replaced(load_config(KUBERNETES_CONFIG), cluster(metrics, other))
    return write_config(for_test(config, RULE_FILES, interval), directory / "kubernetes.yaml")


def test_promtool_accepts_the_static_config() -> None:
    checked = promtool("check", "config", STATIC_CONFIG)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(RULE_FILES)} rule files found" in checked.stdout


def test_the_static_targets_carry_the_labels_the_dashboards_select_on() -> None:
    for job in load_config(STATIC_CONFIG)["scrape_configs"]:
        for group in job["static_configs"]:
            assert {"namespace", "pod", "container"} <= set(group["labels"]), job["job_name"]


def test_promtool_accepts_the_kubernetes_config_with_static_targets_swapped_in(
    tmp_path: Path,
) -> None:
    checked = promtool("check", "config", kubernetes_copy(tmp_path, 9100, 8000))

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(RULE_FILES)} rule files found" in checked.stdout


def test_promtool_refuses_a_broken_relabelling(tmp_path: Path) -> None:
    """The check can fail: an unknown relabel action is refused."""
    copy = load_config(kubernetes_copy(tmp_path, 9100, 8000))
    copy["scrape_configs"][0]["relabel_configs"][0]["action"] = "keep-if-you-like"

    checked = promtool("check", "config", write_config(copy, tmp_path / "broken.yaml"))

    assert checked.returncode != 0


def test_the_kubernetes_config_loads_every_rules_file_where_a_pod_mounts_them() -> None:
    patterns = load_config(KUBERNETES_CONFIG)["rule_files"]

    for rules in RULE_FILES:
        assert any(fnmatch.fnmatch(f"/etc/prometheus/rules/{rules.name}", p) for p in patterns)


def test_the_kubernetes_config_discovers_pods() -> None:
    jobs = load_config(KUBERNETES_CONFIG)["scrape_configs"]

    assert [sd["role"] for job in jobs for sd in job["kubernetes_sd_configs"]] == ["pod"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MetricsEndpoint]:
    with MetricsEndpoint() as served:
        yield served


@pytest.fixture(scope="module")
async def relabelled(
    endpoint: MetricsEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, list[dict[str, Any]]]]:
    """/api/v1/targets of a real Prometheus running the Kubernetes config's relabelling over
    the discovered `cluster`, once its kept targets have been scraped."""
    workdir = tmp_path_factory.mktemp("scrape")
    closed = endpoint.port + 1 if endpoint.port < 65535 else endpoint.port - 1
    prometheus = start_prometheus(kubernetes_copy(workdir, endpoint.port, closed), workdir)
    try:
        await wait_ready(prometheus)
        await poll(lambda: all_scraped(prometheus), "the kept targets scraped", 20)
        yield await prometheus.targets()
    finally:
        prometheus.stop()


async def all_scraped(prometheus: Prometheus) -> bool:
    active = (await prometheus.targets())["activeTargets"]
    return bool(active) and all(target["health"] == "up" for target in active)


def labels_of(targets: list[dict[str, Any]], *names: str) -> set[tuple[str, ...]]:
    return {tuple(target["labels"][name] for name in names) for target in targets}


async def test_only_the_berth_pods_metrics_ports_are_scraped(
    relabelled: dict[str, list[dict[str, Any]]], endpoint: MetricsEndpoint
) -> None:
    active = relabelled["activeTargets"]

    assert labels_of(active, "pod", "container") == {
        ("berth-6c9f7-x2x4q", "api"), ("berth-operator-5d8b9-k7r2m", "operator"),
    }  # fmt: skip
    assert {t["scrapeUrl"] for t in active} == {f"http://127.0.0.1:{endpoint.port}/metrics"}


async def test_other_ports_other_apps_and_finished_pods_are_dropped(
    relabelled: dict[str, list[dict[str, Any]]],
) -> None:
    discovered = [t["discoveredLabels"] for t in relabelled["droppedTargets"]]
    dropped = {(d[f"{META}pod_name"], d[f"{META}pod_container_port_name"]) for d in discovered}

    assert dropped == {
        ("berth-6c9f7-x2x4q", "http"),
        ("berth-operator-5d8b9-k7r2m", "liveness"),
        ("shop-web-0", "metrics"),
        ("berth-6c9f7-old01", "metrics"),
    }


async def test_each_component_gets_its_job_and_the_pods_namespace_and_name(
    relabelled: dict[str, list[dict[str, Any]]],
) -> None:
    active = relabelled["activeTargets"]

    assert labels_of(active, "job", "namespace", "pod") == {
        ("berth", NAMESPACE, "berth-6c9f7-x2x4q"),
        ("berth-operator", NAMESPACE, "berth-operator-5d8b9-k7r2m"),
    }
    assert all(not name.startswith("__") for t in active for name in t["labels"])


async def test_static_targets_can_stand_in_for_discovery_with_meta_labels(
    relabelled: dict[str, list[dict[str, Any]]],
) -> None:
    """The premise of this module: static_configs hand `__meta_*` labels to relabelling."""
    for target in relabelled["activeTargets"]:
        assert target["discoveredLabels"][f"{META}pod_label_app_kubernetes_io_name"] == "berth"
