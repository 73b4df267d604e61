"""Rendering charts/berth with the real helm, and reading what it rendered."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import REPOSITORY

CHART_DIR = REPOSITORY / "charts" / "berth"
# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion floor) and the newest tested.
KUBERNETES_VERSIONS = ("1.25.0", "1.35.0")
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
DEFAULT_VALUES = CHART_DIR / "ci" / "default-values.yaml"
RELEASE = "berth"
NAMESPACE = "berth"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Chart:
    """charts/berth under the real helm binary."""

    helm: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm), *args], capture_output=True, text=True, timeout=120, check=check
        )

    def template(
        self,
        *values: Path,
        namespace: str = NAMESPACE,
        settings: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART_DIR), "--namespace", namespace]
        for path in values or (DEFAULT_VALUES,):
            args += ["-f", str(path)]
        for key, value in (settings or {}).items():
            args += ["--set", f"{key}={value}"]
        return self.run(*args, check=check)

    def render(self, *values: Path, **options: Any) -> Rendered:
        """Every manifest `helm template` renders (hooks and the test Pod included)."""
        text = self.template(*values, **options).stdout
        return Rendered([doc for doc in yaml.safe_load_all(text) if doc])


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str) -> Manifest:
        found = [m for m in self.of_kind(kind) if m["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, Manifest]]:
        """(`Kind/name`, pod spec) of every workload."""
        for manifest in self.manifests:
            spec = manifest.get("spec", {})
            pod = (
                manifest["spec"]
                if manifest["kind"] == "Pod"
                else spec.get("template", {}).get("spec")
            )
            if pod:
                yield f"{manifest['kind']}/{manifest['metadata']['name']}", pod

    def containers(self) -> Iterator[tuple[str, Manifest]]:
        for where, pod in self.pod_specs():
            for container in [*pod.get("initContainers", []), *pod["containers"]]:
                yield f"{where}/{container['name']}", container

    def environment(self, container: Manifest) -> dict[str, str]:
        """A container's environment as the kubelet resolves it from this render's
        ConfigMaps and Secrets (envFrom, then env with secretKeyRef)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env |= self.one("ConfigMap", source["configMapRef"]["name"])["data"]
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is None:
                env[item["name"]] = item.get("value", "")
                continue
            data = self.one("Secret", ref["name"])["data"]
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env


def service_deployment(rendered: Rendered) -> Manifest:
    return rendered.one("Deployment", RELEASE)


def container(pod_owner: Manifest, name: str) -> Manifest:
    pod = pod_owner["spec"]["template"]["spec"]
    found = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == name]
    assert len(found) == 1, name
    return found[0]
