"""Helpers (no fixtures) for the skaffold and k8s/ tests: where the files are, their YAML
documents and objects, skaffold's JSON patches and globs, and the schemas beside the checkout."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import URL

from tests.charts.support import CHART_DIR
from tests.support import REPOSITORY

Manifest = dict[str, Any]

SKAFFOLD_FILE = REPOSITORY / "skaffold.yaml"
K8S_DIR = REPOSITORY / "k8s"
DEV_DIR = K8S_DIR / "dev"
EXAMPLES_DIR = K8S_DIR / "examples"
SKAFFOLD_SCHEMA_NAME = "skaffold-v4beta14.json"
DEV_ONLY = re.compile(r"development only", re.IGNORECASE)
# Kinds whose objects have no namespace (of those k8s/ may hold).
CLUSTER_SCOPED = frozenset({"Namespace"})


def yaml_documents(path: Path) -> list[Manifest]:
    """The non-empty YAML documents of a file, in order."""
    with path.open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


def manifest_files(directory: Path) -> list[Path]:
    """The YAML files of a directory, sorted (as skaffold's glob and kubectl -f see them)."""
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))


def dev_objects() -> list[Manifest]:
    """Every object of k8s/dev/, in file order."""
    return [obj for path in manifest_files(DEV_DIR) for obj in yaml_documents(path)]


def find(objects: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The one object of that kind and name; fails the test if there is none."""
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    pytest.fail(f"no {kind} {name!r} in k8s/dev/", pytrace=False)


def of_kind(objects: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj.get("kind") == kind]


def dev_namespace() -> str:
    """The name of the one Namespace k8s/dev/ creates."""
    namespaces = of_kind(dev_objects(), "Namespace")
    assert len(namespaces) == 1, f"k8s/dev/ must create exactly one Namespace: {namespaces}"
    name: str = namespaces[0]["metadata"]["name"]
    return name


def containers(workload: Manifest) -> list[Manifest]:
    pod: Manifest = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_value(workload: Manifest, container: str, name: str, objects: list[Manifest]) -> str:
    """A container's environment variable, literal or from a Secret of `objects`."""
    spec = next(c for c in containers(workload) if c["name"] == container)
    variable = next((e for e in spec.get("env", []) if e["name"] == name), None)
    assert variable is not None, f"{container} has no {name}"
    if "value" in variable:
        return str(variable["value"])
    ref = variable["valueFrom"]["secretKeyRef"]
    return secret_value(find(objects, "Secret", ref["name"]), ref["key"])


def secret_value(secret: Manifest, key: str) -> str:
    """A key of a Secret written with stringData (as k8s/dev/ writes them)."""
    data: Mapping[str, str] = secret.get("stringData", {})
    assert key in data, f"Secret {secret['metadata']['name']} has no stringData key {key!r}"
    return data[key]


def service_port(service: Manifest, name: str | None = None) -> int:
    """The port of a Service (the named one, or its only one)."""
    ports = service["spec"]["ports"]
    if name is None:
        assert len(ports) == 1, f"Service {service['metadata']['name']} has several ports"
        return int(ports[0]["port"])
    return int(next(p["port"] for p in ports if p.get("name") == name))


def selects(service: Manifest, workload: Manifest) -> bool:
    """Whether the Service's selector picks the workload's pods."""
    selector: Mapping[str, str] = service["spec"].get("selector") or {}
    labels: Mapping[str, str] = workload["spec"]["template"]["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def in_namespace(objects: Iterable[Manifest], namespace: str) -> list[Manifest]:
    """Copies of the objects moved to another namespace (the Namespace itself renamed)."""
    moved = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = namespace
        else:
            obj["metadata"]["namespace"] = namespace
        moved.append(obj)
    return moved


def dump_all(objects: Iterable[Manifest]) -> str:
    return str(yaml.safe_dump_all(list(objects), sort_keys=False))


# -- skaffold -----------------------------------------------------------------------------


def skaffold_configs(path: Path = SKAFFOLD_FILE) -> list[Manifest]:
    """The configs of skaffold.yaml, in file order."""
    return yaml_documents(path)


def skaffold_config(name: str, configs: list[Manifest] | None = None) -> Manifest:
    """The config named `name` (metadata.name)."""
    for config in configs if configs is not None else skaffold_configs():
        if config.get("metadata", {}).get("name") == name:
            return config
    pytest.fail(f"skaffold.yaml has no config named {name!r}", pytrace=False)


def _pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"not a JSON pointer: {path!r}"
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        assert part.isdigit(), f"{path}: {part!r} indexes a list"
        assert int(part) < len(node), f"{path}: no item {part}"
        return node[int(part)]
    assert isinstance(node, dict), f"{path}: {part!r} is not in an object"
    assert part in node, f"{path}: no key {part!r}"
    return node[part]


def apply_patches(config: Manifest, patches: Iterable[Mapping[str, Any]]) -> Manifest:
    """A copy of `config` with JSON patches applied (add, replace, remove), as skaffold applies
    a profile's; a path whose parent is missing fails, as it does for skaffold."""
    patched = copy.deepcopy(config)
    for patch in patches:
        op, path = patch.get("op", "replace"), patch["path"]
        *parents, last = _pointer(path)
        node: Any = patched
        for part in parents:
            node = _child(node, part, path)
        if op == "remove":
            _child(node, last, path)
            del node[int(last) if isinstance(node, list) else last]
        elif op == "replace":
            _child(node, last, path)
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(patch["value"])
        elif op == "add":
            value = copy.deepcopy(patch["value"])
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), value)
            else:
                assert isinstance(node, dict), f"{path}: the parent is not an object"
                node[last] = value
        else:
            pytest.fail(f"patch op {op!r} is not handled here", pytrace=False)
    return patched


def with_profile(config: Manifest, profile: str) -> Manifest:
    """The config as skaffold sees it with `-p profile` (its patches applied)."""
    for candidate in config.get("profiles", []):
        if candidate["name"] == profile:
            return apply_patches(config, candidate.get("patches", []))
    pytest.fail(f"config {config['metadata']['name']} has no profile {profile!r}", pytrace=False)


def repository_glob(pattern: str) -> list[Path]:
    """The repository's files a skaffold glob matches (`**` is zero or more directories)."""
    return sorted(p for p in REPOSITORY.glob(pattern) if p.is_file())


def helm_template_name(image: str) -> str:
    """An artifact's image name as skaffold puts it in template variables (IMAGE_REPO_<name>)."""
    return re.sub(r"[/.-]", "_", image)


def dotted(values: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted Helm key (`image.tag`); KeyError when a part is missing."""
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def chart_values() -> Manifest:
    values: Manifest = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    return values


def run(tool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command-line checker; its verdict is the caller's to judge."""
    return subprocess.run(
        [str(tool), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def assert_logs_into_the_dev_postgres(url: URL, database: str) -> None:
    """`url` reaches the dev PostgreSQL (a Service that selects its Deployment, on that
    Service's port) as the image's superuser (POSTGRES_USER/PASSWORD), in `database`."""
    objects = dev_objects()
    postgres = find(objects, "Deployment", "postgres")
    service = find(objects, "Service", url.host or "")

    assert selects(service, postgres)
    assert url.port == service_port(service)
    assert url.username == env_value(postgres, "postgres", "POSTGRES_USER", objects)
    assert url.password == env_value(postgres, "postgres", "POSTGRES_PASSWORD", objects)
    assert url.database == database
