"""A real Prometheus server for the tests (Debian's `prometheus`, started on a free port with
its data in a tmp dir), the repository's scrape configs rewritten for it, and the queries of
the dashboards and the rules, as Grafana and Prometheus would run them."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.observability.support import DASHBOARD_FILES, PROMETHEUS_DIR, RULE_FILES
from tests.support import Spawned, free_port, require_tool

SCRAPE_DIR = PROMETHEUS_DIR / "scrape"
KUBERNETES_CONFIG = SCRAPE_DIR / "kubernetes.yaml"
STATIC_CONFIG = SCRAPE_DIR / "static.yaml"
START_SECONDS = 30.0
Config = dict[str, Any]


# -- configs ------------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    loaded: Config = yaml.safe_load(path.read_text())
    return loaded


def fast_rule_files(directory: Path, interval: str = "1s") -> list[Path]:
    """Copies of the repository's rule files whose groups are evaluated every `interval`
    (theirs is 30s or the global one): what the rules compute is unchanged."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in RULE_FILES:
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            group["interval"] = interval
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(rules, sort_keys=False))
        copies.append(copy)
    return copies


def for_test(config: Config, rule_files: list[Path], interval: str = "1s") -> Config:
    """`config` scraping and evaluating every `interval`, with these rule files."""
    return {
        **config,
        "global": {**config.get("global", {}), "scrape_interval": interval,
                   "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
    }  # fmt: skip


def with_static_targets(config: Config, targets: dict[str, str]) -> Config:
    """`config` (static.yaml) with each job's targets replaced by `targets[job]` (host:port),
    its labels kept."""
    jobs = []
    for job in config["scrape_configs"]:
        groups = [
            {**group, "targets": [targets[job["job_name"]]]} for group in job["static_configs"]
        ]
        jobs.append({**job, "static_configs": groups})
    return {**config, "scrape_configs": jobs}


def with_discovery_replaced(config: Config, discovered: list[dict[str, Any]]) -> Config:
    """`config` (kubernetes.yaml) with every `kubernetes_sd_configs` replaced by
    `static_configs` holding `discovered`: targets with the `__meta_kubernetes_*` labels pod
    discovery gives (Debian's build has no Kubernetes discovery)."""
    jobs = []
    for job in config["scrape_configs"]:
        replaced = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
        if "kubernetes_sd_configs" in job:
            replaced["static_configs"] = discovered
        jobs.append(replaced)
    return {**config, "scrape_configs": jobs}


def write_config(config: Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- the server ---------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A running Prometheus server and its HTTP API."""

    process: Spawned
    url: str

    async def get(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            response = await client.get(path, params=params)
        body = response.json()
        assert response.status_code == 200, response.text
        assert body["status"] == "success", response.text
        return body["data"]

    async def query(self, expression: str) -> list[dict[str, Any]]:
        """The series an instant query returns now."""
        data = await self.get("/api/v1/query", query=expression)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def targets(self) -> dict[str, list[dict[str, Any]]]:
        data: dict[str, list[dict[str, Any]]] = await self.get("/api/v1/targets")
        return data

    async def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = (await self.get("/api/v1/rules"))["groups"]
        return groups

    def stop(self) -> None:
        self.process.kill()


def start_prometheus(config: Path, workdir: Path) -> Prometheus:
    """`prometheus` on a free loopback port, its TSDB in `workdir`; not yet ready."""
    port = free_port()
    process = Spawned(
        [str(require_tool("prometheus")), f"--config.file={config}",
         f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        env={"PATH": os.environ.get("PATH", "/usr/bin")}, cwd=workdir, name="prometheus",
    )  # fmt: skip
    return Prometheus(process, f"http://127.0.0.1:{port}")


async def wait_ready(prometheus: Prometheus, timeout: float = START_SECONDS) -> None:
    async def ready() -> bool:
        assert prometheus.process.running(), prometheus.process.describe()
        async with httpx.AsyncClient(timeout=1) as client:
            try:
                return (await client.get(f"{prometheus.url}/-/ready")).status_code == 200
            except httpx.TransportError:
                return False

    await poll(ready, "Prometheus ready", timeout)


async def poll(probe: Callable[[], Any], what: str, timeout: float) -> None:
    """Await `probe()` every 0.2 s until it is true; fail after `timeout` naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.2)


# -- the queries --------------------------------------------------------------------------

# What Grafana puts in place of the variables before a query reaches Prometheus: "All" for the
# dashboards' own, a window the test's one-second scrapes fill for the built-in ones.
WINDOW = "30s"
VARIABLES = {
    "$__rate_interval": WINDOW,
    "$__interval": WINDOW,
    "$__range": WINDOW,
    "$namespace": ".*",
    "$pod": ".*",
    "$route": ".*",
}
VARIABLE = re.compile(r"\$\{?\w+\}?")


def substituted(expression: str) -> str:
    for variable, value in VARIABLES.items():
        expression = expression.replace(variable, value)
    assert not VARIABLE.search(expression), f"a variable left in {expression!r}"
    return expression


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL target of a dashboard panel."""

    dashboard: str
    panel: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expr}"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those in (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _is_loki(source: Any) -> bool:
    return isinstance(source, dict) and source.get("type") == "loki"


def dashboard_queries() -> list[PanelQuery]:
    """Every PromQL expression of every dashboard on disk now (Loki's LogQL left out)."""
    queries = []
    for path in DASHBOARD_FILES:
        board = json.loads(path.read_text())
        for panel in _panels(board["panels"]):
            for target in panel.get("targets", []):
                if _is_loki(panel.get("datasource")) or _is_loki(target.get("datasource")):
                    continue
                if target.get("expr"):
                    queries.append(PanelQuery(board["title"], panel["title"], target["expr"]))
    return queries


def recording_rules() -> dict[str, str]:
    """Recorded name -> expression, of every rules file."""
    return {
        rule["record"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
