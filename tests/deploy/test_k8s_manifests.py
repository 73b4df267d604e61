"""k8s/: the dev backing services and the example Tenants.

Offline, k8s/dev/ validates strictly against the oldest and newest supported Kubernetes schemas
(kubernetes-validate; the Tenants are a CRD it has no schema for), and its objects hang
together: labels, namespace, pinned images, hardened containers with resources, probes, Services
that select their pods, the admin URL the operator is given. Against the real API server (the
session's `kube_server`), every dev manifest passes `kubectl apply --dry-run=server
--validate=strict`, every example Tenant is admitted, and bad Tenants are refused by the CRD's
schema and CEL rules with a message that names the problem.
"""

from __future__ import annotations

import copy
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from berth_operator.crd import MAX_SLUG_LENGTH, SERVER_IMMUTABLE_MESSAGE, tenant_crd
from berth_operator.resource import (
    API_VERSION,
    KIND,
    MAX_CONNECTION_LIMIT,
    SECRET_KEY_PATTERN,
    SECRET_NAME_PATTERN,
    TENANT_NAME_MESSAGE,
    TENANT_NAME_RULE,
    DeletionPolicy,
    Tenant,
)
from pymongo.uri_parser import parse_uri
from sqlalchemy import make_url

from tests.charts.support import KUBERNETES_VERSIONS
from tests.deploy.k8s_support import (
    CLUSTER_SCOPED,
    DEV_DIR,
    DEV_ONLY,
    EXAMPLES_DIR,
    Manifest,
    assert_logs_into_the_dev_postgres,
    containers,
    dev_namespace,
    dev_objects,
    dump_all,
    env_value,
    find,
    in_namespace,
    manifest_files,
    of_kind,
    run,
    secret_value,
    selects,
    service_port,
    yaml_documents,
)
from tests.kube import ApiServer, kubectl
from tests.support import require_tool

WORKLOADS = ("Deployment", "StatefulSet")
# A release, never a floating tag (`16`, `7-alpine`, `latest`): PostgreSQL's releases have two
# parts (16.4), Redis' and MongoDB's three.
PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9./-]*:\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?$")
# The client each server's readiness probe runs, and the image it must come from.
READINESS = {
    "postgres": ("pg_isready", "postgres:16."),
    "redis": ("redis-cli ping", "redis:7."),
    "mongodb": ("mongosh", "mongo:7.0."),
}
RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
EXAMPLE_FILES = manifest_files(EXAMPLES_DIR)
DEV_FILES = manifest_files(DEV_DIR)


def workloads() -> list[Manifest]:
    return [obj for obj in dev_objects() if obj["kind"] in WORKLOADS]


def example(path: Path) -> Manifest:
    (tenant,) = yaml_documents(path)
    return tenant


def shown_fields(node: Any, path: tuple[str, ...] = ()) -> set[str]:
    """Dotted paths of the scalar leaves of a Tenant's spec as written."""
    if not isinstance(node, dict):
        return {".".join(path)}
    return set().union(*(shown_fields(value, (*path, key)) for key, value in node.items()))


def schema_fields(schema: Manifest, path: tuple[str, ...] = ()) -> set[str]:
    """Dotted paths of the scalar properties of a structural schema."""
    if schema.get("type") != "object":
        return {".".join(path)}
    properties: Manifest = schema.get("properties", {})
    return set().union(*(schema_fields(value, (*path, key)) for key, value in properties.items()))


def spec_schema() -> Manifest:
    schema: Manifest = tenant_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec: Manifest = schema["properties"]["spec"]
    return spec


# -- offline: the Kubernetes schemas ------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_dev_manifest_validates_strictly_against_kubernetes(version: str) -> None:
    validator = require_tool("kubernetes-validate")

    result = run(validator, "--strict", "-k", version, *DEV_FILES)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind without a schema is only a warning: every object must have passed.
    assert output.count("passed for resource") == len(dev_objects()), output


def test_kubernetes_validate_refuses_a_misspelled_field(tmp_path: Path) -> None:
    objects = dev_objects()
    workload = next(obj for obj in objects if obj["kind"] in WORKLOADS)
    containers(workload)[0]["imagePullPolicyy"] = "Always"
    broken = tmp_path / "broken.yaml"
    broken.write_text(dump_all(objects), encoding="utf-8")

    result = run(
        require_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSIONS[0], broken
    )

    assert result.returncode != 0
    assert "imagePullPolicyy" in result.stdout + result.stderr


# -- offline: the dev services ------------------------------------------------------------


@pytest.mark.parametrize("path", DEV_FILES, ids=lambda p: p.name)
def test_every_dev_file_says_at_its_top_that_it_is_for_development_only(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]

    assert first.startswith("#")
    assert DEV_ONLY.search(first), first


def test_every_object_is_labelled_and_lives_in_the_dev_namespace() -> None:
    namespace = dev_namespace()

    for obj in dev_objects():
        metadata = obj["metadata"]
        labels = metadata.get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "berth", metadata["name"]
        if obj["kind"] not in CLUSTER_SCOPED:
            assert metadata.get("namespace") == namespace, metadata["name"]
            assert all(label in labels for label in RECOMMENDED_LABELS), metadata["name"]


def test_every_workload_selects_its_own_pods_and_one_service_selects_them() -> None:
    services = of_kind(dev_objects(), "Service")

    for workload in workloads():
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        assert all(labels.get(k) == workload["metadata"]["labels"][k] for k in RECOMMENDED_LABELS)
        picked = [s["metadata"]["name"] for s in services if selects(s, workload)]
        assert picked == [workload["metadata"]["name"]], picked


def test_every_service_targets_a_named_port_of_the_pods_it_selects() -> None:
    for service in of_kind(dev_objects(), "Service"):
        (workload,) = (w for w in workloads() if selects(service, w))
        named = {p["name"] for c in containers(workload) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)


def test_every_container_pins_its_image_to_a_release() -> None:
    images = [c["image"] for w in workloads() for c in containers(w)]

    assert images
    for image in images:
        assert PINNED_IMAGE.match(image), image


@pytest.mark.parametrize("name", sorted(READINESS))
def test_each_server_is_ready_when_its_own_client_says_so(name: str) -> None:
    client, image = READINESS[name]
    (container,) = containers(find(dev_objects(), "Deployment", name))

    command = " ".join(container["readinessProbe"]["exec"]["command"])

    assert container["image"].startswith(image)
    assert client in command


def test_every_container_has_requests_and_limits_and_runs_unprivileged_read_only() -> None:
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(workload):
            resources, context = container["resources"], container["securityContext"]
            for bound in ("requests", "limits"):
                assert set(resources[bound]) >= {"cpu", "memory"}, (container["name"], bound)
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}


def test_every_workload_runs_one_replica_replaced_never_alongside_another() -> None:
    for workload in workloads():
        assert workload["spec"]["replicas"] == 1
        assert workload["spec"]["strategy"] == {"type": "Recreate"}


def test_the_admin_secret_is_the_url_of_the_dev_postgres_superuser() -> None:
    url = make_url(secret_value(find(dev_objects(), "Secret", "berth-postgres-admin"), "url"))

    assert url.drivername == "postgresql"
    # The image makes POSTGRES_USER its superuser; `postgres` is the maintenance database.
    assert_logs_into_the_dev_postgres(url, "postgres")


def test_the_mongo_admin_secret_is_the_url_of_the_dev_mongodb() -> None:
    objects = dev_objects()
    uri = parse_uri(secret_value(find(objects, "Secret", "berth-mongo-admin"), "url"))
    ((host, port),) = uri["nodelist"]
    service = find(objects, "Service", host)

    assert selects(service, find(objects, "Deployment", "mongodb"))
    assert port == service_port(service)
    # No authentication on the dev MongoDB: every client is its admin, no user is needed.
    assert uri["username"] is None
    assert "--auth" not in containers(find(objects, "Deployment", "mongodb"))[0]["args"]


def test_postgres_keeps_its_data_directory_in_a_volume_it_can_create() -> None:
    postgres = find(dev_objects(), "Deployment", "postgres")
    (container,) = containers(postgres)
    pgdata = env_value(postgres, "postgres", "PGDATA", [])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}

    # A subdirectory of the mount: initdb may chmod it (it cannot chmod the mount point).
    assert str(Path(pgdata).parent) in mounts
    assert pgdata not in mounts


# -- offline: the example Tenants ---------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_is_a_tenant_in_the_dev_namespace_the_operator_accepts(path: Path) -> None:
    tenant = example(path)
    name = tenant["metadata"]["name"]

    assert (tenant["apiVersion"], tenant["kind"]) == (API_VERSION, KIND)
    assert tenant["metadata"]["namespace"] == dev_namespace()
    assert re.fullmatch(TENANT_NAME_RULE, name)
    assert len(name) <= MAX_SLUG_LENGTH
    assert Tenant.from_body(tenant).problem is None  # the operator's own parsing


@pytest.mark.parametrize(
    ("file", "spec"),
    [
        ("minimal.yaml", {}),
        ("delete-policy.yaml", {"deletionPolicy": DeletionPolicy.DELETE.value}),
        ("suspended.yaml", {"suspended": True}),
    ],
)
def test_the_basic_examples_set_one_thing_each(file: str, spec: Manifest) -> None:
    assert example(EXAMPLES_DIR / file)["spec"] == spec


def test_the_examples_show_every_field_of_the_spec_and_have_unique_names() -> None:
    tenants = [example(path) for path in EXAMPLE_FILES]
    shown = set().union(*(shown_fields(tenant["spec"]) for tenant in tenants))
    names = [tenant["metadata"]["name"] for tenant in tenants]

    assert shown == schema_fields(spec_schema())
    # Databases are named after the slug, per server: two examples must not clash.
    assert len(set(names)) == len(names)


def test_an_example_names_only_servers_the_dev_services_hold() -> None:
    objects = dev_objects()
    ref_schema = spec_schema()["properties"]["postgres"]["properties"]["serverSecretRef"]
    default_key = ref_schema["properties"]["key"]["default"]
    refs = [
        example(path)["spec"]["postgres"]["serverSecretRef"]
        for path in EXAMPLE_FILES
        if "serverSecretRef" in example(path)["spec"].get("postgres", {})
    ]

    assert refs
    for ref in refs:
        url = make_url(
            secret_value(find(objects, "Secret", ref["name"]), ref.get("key", default_key))
        )
        assert url.host == "postgres"


# -- against the real API server ----------------------------------------------------------


@pytest.fixture(scope="module")
def namespace(kube_server: ApiServer) -> Iterator[str]:
    """A namespace of this module's own, created for real from k8s/dev's Namespace manifest
    (the API server refuses a dry run in a namespace that does not exist)."""
    name = f"k8s-manifests-{uuid.uuid4().hex[:8]}"
    (manifest,) = in_namespace(of_kind(dev_objects(), "Namespace"), name)
    kubectl(kube_server, "apply", "-f", "-", input=dump_all([manifest]))
    yield name
    kubectl(kube_server, "delete", "namespace", name, "--wait=false", check=False)


def apply(
    server: ApiServer, objects: list[Manifest], *, dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply --validate=strict` (a server dry run unless told); not raised on refusal."""
    dry = ("--dry-run=server",) if dry_run else ()
    return kubectl(
        server, "apply", *dry, "--validate=strict", "-f", "-", input=dump_all(objects), check=False
    )


@pytest.mark.parametrize("path", DEV_FILES, ids=lambda p: p.name)
def test_the_api_server_accepts_every_dev_manifest_strictly(
    kube_server: ApiServer, namespace: str, path: Path
) -> None:
    objects = in_namespace(yaml_documents(path), namespace)

    result = apply(kube_server, objects)

    assert result.returncode == 0, result.stderr
    for obj in objects:
        kind, name = obj["kind"].lower(), re.escape(obj["metadata"]["name"])
        line = rf"^{kind}(\.[a-z.]+)?/{name} \w+ \(server dry run\)$"
        assert re.search(line, result.stdout, re.MULTILINE), result.stdout
    assert result.stdout.count("(server dry run)") == len(objects)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_the_api_server_admits_every_example_tenant(
    kube_server: ApiServer, namespace: str, path: Path
) -> None:
    tenant = in_namespace([example(path)], namespace)

    result = apply(kube_server, tenant)

    assert result.returncode == 0, result.stderr
    assert f"tenant.berth.dev/{tenant[0]['metadata']['name']} created (server dry run)" in (
        result.stdout
    )


def _name_refusals() -> list[str]:
    return [f"metadata.name in body should match '{TENANT_NAME_RULE}'", TENANT_NAME_MESSAGE]


def _limit(value: int) -> Manifest:
    return {"postgres": {"connectionLimit": value}}


def _server(**ref: str) -> Manifest:
    return {"postgres": {"serverSecretRef": ref}}


MINIMUM_LIMIT = spec_schema()["properties"]["postgres"]["properties"]["connectionLimit"]["minimum"]
POLICIES = ", ".join(f'"{policy.value}"' for policy in DeletionPolicy)
BAD_TENANTS = [
    pytest.param("Acme_Corp", {}, _name_refusals(), id="uppercase-and-underscore"),
    pytest.param("ab", {}, _name_refusals(), id="too-short"),
    pytest.param("a" * (MAX_SLUG_LENGTH + 1), {},
                 [f"metadata.name: Too long: may not be longer than {MAX_SLUG_LENGTH}"],
                 id="too-long"),
    pytest.param("2fast", {}, _name_refusals(), id="starts-with-a-digit"),
    pytest.param(None, {"surprise": True}, ['unknown field "spec.surprise"'], id="unknown-field"),
    pytest.param(None, {"postgres": {"surprise": 1}}, ['unknown field "spec.postgres.surprise"'],
                 id="unknown-nested-field"),
    pytest.param(None, {"deletionPolicy": "Nope"},
                 [f'spec.deletionPolicy: Unsupported value: "Nope": supported values: {POLICIES}'],
                 id="unknown-deletion-policy"),
    pytest.param(None, {"suspended": "yes"}, ["spec.suspended in body must be of type boolean"],
                 id="suspended-not-a-boolean"),
    pytest.param(None, _limit(-1),
                 [f"spec.postgres.connectionLimit in body should be greater than or equal to "
                  f"{MINIMUM_LIMIT}"], id="negative-connection-limit"),
    pytest.param(None, _limit(MAX_CONNECTION_LIMIT + 1),
                 [f"spec.postgres.connectionLimit in body should be less than or equal to "
                  f"{MAX_CONNECTION_LIMIT}"], id="connection-limit-too-high"),
    pytest.param(None, _server(key="url"), ["spec.postgres.serverSecretRef.name: Required value"],
                 id="server-without-a-secret-name"),
    pytest.param(None, _server(name="Bad_Secret"),
                 [f"serverSecretRef.name in body should match '{SECRET_NAME_PATTERN}'"],
                 id="server-secret-not-a-name"),
    pytest.param(None, _server(name="admin", key="a/b"),
                 [f"spec.postgres.serverSecretRef.key in body should match '{SECRET_KEY_PATTERN}'"],
                 id="server-key-not-a-key"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "spec", "refusals"), BAD_TENANTS)
def test_the_api_server_refuses_a_bad_tenant_and_says_why(
    kube_server: ApiServer, namespace: str, name: str | None, spec: Manifest, refusals: list[str]
) -> None:
    (tenant,) = in_namespace([example(EXAMPLES_DIR / "minimal.yaml")], namespace)
    tenant["metadata"]["name"] = name or tenant["metadata"]["name"]
    tenant["spec"] = spec

    result = apply(kube_server, [tenant])

    assert result.returncode != 0, result.stdout
    for refusal in refusals:
        assert refusal in result.stderr


def test_the_server_of_the_pinned_example_cannot_be_changed_once_it_exists(
    kube_server: ApiServer, namespace: str
) -> None:
    (tenant,) = in_namespace([example(EXAMPLES_DIR / "own-server.yaml")], namespace)
    created = apply(kube_server, [tenant], dry_run=False)
    assert created.returncode == 0, created.stderr
    moved = copy.deepcopy(tenant)
    moved["spec"]["postgres"]["serverSecretRef"]["name"] = "another-server"
    dropped = copy.deepcopy(tenant)
    del dropped["spec"]["postgres"]["serverSecretRef"]

    refusals = [apply(kube_server, [change]) for change in (moved, dropped)]
    unchanged = apply(kube_server, [tenant])

    for refused in refusals:
        assert refused.returncode != 0
        assert SERVER_IMMUTABLE_MESSAGE in refused.stderr
    assert unchanged.returncode == 0, unchanged.stderr
