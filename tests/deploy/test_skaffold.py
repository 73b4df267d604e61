"""skaffold.yaml, checked without skaffold: it validates against the v4beta14 schema, deploys
k8s/dev/ before the chart, every path and glob it names exists, and what it hands the chart
(image, URLs, Secret, ports) matches the dev services, the chart's values and the service."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pymongo.uri_parser import parse_uri
from sqlalchemy import make_url

from service.core.config import HttpSettings
from tests.charts.support import CHART_DIR, KUBERNETES_VERSIONS
from tests.deploy.k8s_support import (
    DEV_DIR,
    EXAMPLES_DIR,
    SKAFFOLD_SCHEMA_NAME,
    Manifest,
    assert_logs_into_the_dev_postgres,
    chart_values,
    dev_namespace,
    dev_objects,
    dotted,
    env_value,
    find,
    helm_template_name,
    manifest_files,
    repository_glob,
    run,
    secret_value,
    selects,
    service_port,
    skaffold_config,
    skaffold_configs,
    with_profile,
)
from tests.support import REPOSITORY, require_tool, schema_file

SERVICES_CONFIG = "berth-dev-services"
APP_CONFIG = "berth"
DEV_PROFILE = "dev"
# Where the image keeps the sources (its WORKDIR): /app/service, /app/operator.
IMAGE_WORKDIR = "/app"


def app() -> Manifest:
    return skaffold_config(APP_CONFIG)


def services() -> Manifest:
    return skaffold_config(SERVICES_CONFIG)


def release(config: Manifest | None = None) -> Manifest:
    releases: list[Manifest] = (config or app())["deploy"]["helm"]["releases"]
    assert len(releases) == 1, releases
    return releases[0]


def artifact(config: Manifest | None = None) -> Manifest:
    artifacts: list[Manifest] = (config or app())["build"]["artifacts"]
    assert len(artifacts) == 1, artifacts
    return artifacts[0]


def check_schema(configs: list[Manifest], directory: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema on each config (it reads one YAML document per file)."""
    files = []
    for index, config in enumerate(configs):
        path = directory / f"skaffold-{index}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        files.append(path)
    checker = require_tool("check-jsonschema")
    return run(checker, "--schemafile", schema_file(SKAFFOLD_SCHEMA_NAME), *files)


# -- the schema ---------------------------------------------------------------------------


def test_every_config_of_skaffold_yaml_validates_against_the_v4beta14_schema(
    tmp_path: Path,
) -> None:
    configs = skaffold_configs()

    result = check_schema(configs, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert [c["apiVersion"] for c in configs] == ["skaffold/v4beta14"] * len(configs)
    assert [c["kind"] for c in configs] == ["Config"] * len(configs)


@pytest.mark.parametrize(
    ("config", "path", "wrong"),
    [
        pytest.param(APP_CONFIG, ("build", "local", "useBuildkit"), "useBuildKit", id="case"),
        pytest.param(APP_CONFIG, ("portForward",), "portForwards", id="top-level"),
        pytest.param(SERVICES_CONFIG, ("manifests", "rawYaml"), "rawYAML", id="manifests"),
        pytest.param(
            APP_CONFIG, ("deploy", "helm", "releases", 0, "setValueTemplates"),
            "setValueTemplate", id="helm-release",
        ),
    ],
)  # fmt: skip
def test_the_schema_check_refuses_a_misspelled_key(
    tmp_path: Path, config: str, path: tuple[str | int, ...], wrong: str
) -> None:
    configs = skaffold_configs()
    node: Any = skaffold_config(config, configs)
    for part in path[:-1]:
        node = node[part]
    node[wrong] = node.pop(path[-1])

    result = check_schema(configs, tmp_path)

    assert result.returncode != 0
    assert wrong in result.stdout + result.stderr


# -- what deploys, in which order ---------------------------------------------------------


def test_the_dev_services_config_comes_first_and_the_app_requires_it() -> None:
    names = [config["metadata"]["name"] for config in skaffold_configs()]

    # Within one config skaffold deploys Helm before kubectl: the services need their own.
    assert names == [SERVICES_CONFIG, APP_CONFIG]
    assert app()["requires"] == [{"configs": [SERVICES_CONFIG]}]
    assert set(services()) <= {"apiVersion", "kind", "metadata", "manifests", "deploy"}
    assert services()["deploy"] == {"kubectl": {}}
    assert "kubectl" not in app()["deploy"]


def test_every_raw_yaml_glob_matches_files_and_covers_all_of_k8s_dev() -> None:
    globs: list[str] = services()["manifests"]["rawYaml"]

    matched = [repository_glob(pattern) for pattern in globs]

    assert all(matched), dict(zip(globs, matched, strict=True))
    assert sorted({path for paths in matched for path in paths}) == manifest_files(DEV_DIR)


def test_no_example_tenant_is_deployed_before_the_chart_installs_its_crd() -> None:
    deployed = {path for pattern in services()["manifests"]["rawYaml"]
                for path in repository_glob(pattern)}  # fmt: skip

    assert not deployed & set(manifest_files(EXAMPLES_DIR))
    assert "manifests" not in app()


def test_the_namespace_is_created_by_the_sorted_first_dev_file() -> None:
    first = manifest_files(DEV_DIR)[0]

    assert [obj["kind"] for obj in yaml.safe_load_all(first.read_text())] == ["Namespace"]


# -- the image ----------------------------------------------------------------------------


def test_the_one_artifact_is_the_image_built_from_the_repositorys_dockerfile() -> None:
    built = artifact()
    context = REPOSITORY / built["context"]

    assert built["image"] == APP_CONFIG
    assert context.resolve() == REPOSITORY
    assert (context / built["docker"]["dockerfile"]).is_file(), "the Dockerfile is missing"
    assert app()["build"]["local"] == {"useBuildkit": True}


def test_the_image_values_are_templated_from_the_built_artifact() -> None:
    name = helm_template_name(artifact()["image"])

    assert release()["setValueTemplates"] == {
        "image.repository": f"{{{{.IMAGE_REPO_{name}}}}}",
        "image.tag": f"{{{{.IMAGE_TAG_{name}}}}}@{{{{.IMAGE_DIGEST_{name}}}}}",
    }


# -- the chart ----------------------------------------------------------------------------


def test_the_release_installs_the_chart_into_the_namespace_k8s_dev_creates() -> None:
    chart = REPOSITORY / release()["chartPath"]

    assert chart.resolve() == CHART_DIR
    assert (chart / "Chart.yaml").is_file(), "charts/berth/Chart.yaml is missing"
    assert release()["name"] == APP_CONFIG
    assert release()["namespace"] == dev_namespace()
    assert "createNamespace" not in release()  # k8s/dev/ owns it


@pytest.mark.parametrize("profile", [None, DEV_PROFILE])
def test_every_value_set_on_the_release_is_a_value_of_the_chart(profile: str | None) -> None:
    config = app() if profile is None else with_profile(app(), profile)
    keys = [*release(config)["setValues"], *release(config)["setValueTemplates"]]
    values = chart_values()

    unknown = []
    for key in keys:
        try:
            dotted(values, key)
        except KeyError:
            unknown.append(key)

    assert unknown == [], f"not in charts/berth/values.yaml: {unknown}"


def test_the_control_plane_database_is_the_dev_postgres() -> None:
    objects = dev_objects()
    url = make_url(release()["setValues"]["database.url"])

    assert url.drivername == "postgresql+asyncpg"
    database = env_value(
        find(objects, "Deployment", "postgres"), "postgres", "POSTGRES_DB", objects
    )
    assert_logs_into_the_dev_postgres(url, database)


def test_redis_is_the_dev_redis() -> None:
    objects = dev_objects()
    url = make_url(release()["setValues"]["redis.url"])
    service = find(objects, "Service", url.host or "")

    assert url.drivername == "redis"
    assert selects(service, find(objects, "Deployment", "redis"))
    assert url.port == service_port(service)


def test_the_operators_default_server_is_the_dev_admin_secret() -> None:
    objects = dev_objects()
    name = release()["setValues"]["operator.defaultServer.secretName"]
    key = dotted(chart_values(), "operator.defaultServer.key")

    secret = find(objects, "Secret", name)

    assert secret["metadata"]["namespace"] == release()["namespace"]
    assert make_url(secret_value(secret, key)).host == "postgres"


def test_the_submissions_are_on_the_dev_mongodb() -> None:
    objects = dev_objects()
    uri = parse_uri(release()["setValues"]["mongo.url"])
    ((host, port),) = uri["nodelist"]
    service = find(objects, "Service", host)

    assert selects(service, find(objects, "Deployment", "mongodb"))
    assert port == service_port(service)
    # The dev MongoDB has no authentication (k8s/dev/mongodb.yaml): a user would be unchecked.
    assert uri["username"] is None


def test_the_operators_default_mongo_server_is_the_dev_mongo_admin_secret() -> None:
    objects = dev_objects()
    name = release()["setValues"]["operator.defaultMongoServer.secretName"]
    key = dotted(chart_values(), "operator.defaultMongoServer.key")

    secret = find(objects, "Secret", name)

    assert secret["metadata"]["namespace"] == release()["namespace"]
    assert (
        parse_uri(secret_value(secret, key))["nodelist"]
        == (parse_uri(release()["setValues"]["mongo.url"])["nodelist"])
    )


def test_the_release_runs_one_replica_in_the_local_environment() -> None:
    values = release()["setValues"]

    assert values["environment"] == "local"
    assert int(values["replicaCount"]) == 1


def test_the_before_hook_waits_for_workloads_the_dev_services_deploy() -> None:
    hooks = app()["deploy"]["helm"]["hooks"]["before"]
    (command,) = (hook["host"]["command"] for hook in hooks)
    words = shlex.split(command[-1])
    targets = [word.split("/", 1) for word in words if word.startswith("deployment/")]
    namespace = words[words.index("--namespace") + 1]

    assert command[:2] == ["sh", "-c"]
    assert words[:1] == ["kubectl"]
    assert "wait" in words
    assert {name for _, name in targets} == {"postgres", "redis"}
    for _, name in targets:
        assert find(dev_objects(), "Deployment", name)["metadata"]["namespace"] == namespace
    assert namespace == release()["namespace"]


# What skaffold hands helm for a local build (no registry: no digest) and a pushed one.
LOCAL_BUILD = {"IMAGE_REPO": "berth", "IMAGE_TAG": "5e1f0c2-dirty", "IMAGE_DIGEST": ""}
PUSHED_BUILD = {
    **LOCAL_BUILD,
    "IMAGE_REPO": "registry.test/berth",
    "IMAGE_DIGEST": "sha256:" + "0" * 64,
}


def go_string(value: object) -> str:
    """A setValues value as skaffold stringifies it (Go's %v: `true`, not `True`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def helm_set_args(config: Manifest, build: dict[str, str]) -> list[str]:
    """The --set arguments of skaffold's Helm deployer (its ConstructOverrideArgs): setValues,
    then setValueTemplates expanded with the build's variables, a trailing "@" dropped."""
    variables = {
        f"{k}_{helm_template_name(artifact(config)['image'])}": v for k, v in build.items()
    }
    args = []
    for key, value in sorted(release(config)["setValues"].items()):
        args += ["--set", f"{key}={go_string(value)}"]
    for key, template in sorted(release(config)["setValueTemplates"].items()):
        value = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], template)
        args += ["--set", f"{key}={value.removesuffix('@')}"]
    return args


@pytest.mark.parametrize(
    ("profile", "build"),
    [
        pytest.param(None, PUSHED_BUILD, id="default-pushed"),
        pytest.param(None, LOCAL_BUILD, id="default-local"),
        pytest.param(DEV_PROFILE, LOCAL_BUILD, id="dev-local"),
    ],
)
def test_the_chart_renders_with_what_skaffold_passes_it(
    profile: str | None, build: dict[str, str]
) -> None:
    config = app() if profile is None else with_profile(app(), profile)
    helm = require_tool("helm")
    image = f"{build['IMAGE_REPO']}:{build['IMAGE_TAG']}"
    image += f"@{build['IMAGE_DIGEST']}" if build["IMAGE_DIGEST"] else ""

    result = run(
        helm, "template", release(config)["name"], REPOSITORY / release(config)["chartPath"],
        "--namespace", release(config)["namespace"], "--kube-version", KUBERNETES_VERSIONS[0],
        *helm_set_args(config, build),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    rendered = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    pods = [obj["spec"]["template"]["spec"] for obj in rendered if obj["kind"] == "Deployment"]
    images = {
        c["image"] for pod in pods for c in [*pod.get("initContainers", []), *pod["containers"]]
    }
    assert images == {image}
    (forward,) = config["portForward"]
    (service,) = (
        o
        for o in rendered
        if o["kind"] == "Service" and o["metadata"]["name"] == forward["resourceName"]
    )
    assert forward["port"] in [port["port"] for port in service["spec"]["ports"]]
    # dev.reload: the service runs uvicorn --reload (and only then).
    commands = [
        " ".join([*c.get("command", []), *c.get("args", [])]) for p in pods for c in p["containers"]
    ]
    assert any("--reload" in command for command in commands) == (profile == DEV_PROFILE)


# -- port forwarding ----------------------------------------------------------------------


def test_the_service_is_forwarded_from_the_services_default_port_to_the_charts_port() -> None:
    (forward,) = app()["portForward"]
    chart_name = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["name"]
    name = release()["name"]
    fullname = name if chart_name in name else f"{name}-{chart_name}"  # berth.fullname

    assert forward["resourceType"] == "service"
    assert forward["resourceName"] == fullname
    assert forward["namespace"] == release()["namespace"]
    assert forward["port"] == dotted(chart_values(), "service.port")
    assert forward["localPort"] == HttpSettings().port


# -- the dev profile ----------------------------------------------------------------------


def test_the_dev_profile_syncs_every_python_source_into_the_images_workdir() -> None:
    rules: list[Manifest] = artifact(with_profile(app(), DEV_PROFILE))["sync"]["manual"]
    sources = sorted(
        path
        for folder in ("service", "operator")
        for path in (REPOSITORY / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )

    synced = {path for rule in rules for path in repository_glob(rule["src"])}

    assert all(repository_glob(rule["src"]) for rule in rules), rules
    assert {rule["dest"] for rule in rules} == {IMAGE_WORKDIR}
    assert all("strip" not in rule for rule in rules)  # /app/service/..., /app/operator/...
    assert sorted(synced) == sources


def test_the_sync_destination_is_the_dockerfiles_workdir() -> None:
    dockerfile = REPOSITORY / artifact()["context"] / artifact()["docker"]["dockerfile"]
    assert dockerfile.is_file(), "the Dockerfile is missing"
    workdirs = re.findall(r"^\s*WORKDIR\s+(\S+)", dockerfile.read_text(), re.MULTILINE)

    assert workdirs, "the Dockerfile sets no WORKDIR"
    assert workdirs[-1].rstrip("/") == IMAGE_WORKDIR


def test_the_dev_profile_turns_on_the_charts_reload_and_the_default_loop_does_not() -> None:
    plain, dev = app(), with_profile(app(), DEV_PROFILE)

    assert [profile["name"] for profile in plain["profiles"]] == [DEV_PROFILE]
    assert release(dev)["setValues"]["dev.reload"] is True
    assert "dev.reload" not in release(plain)["setValues"]
    assert "sync" not in artifact(plain)
    assert {k: v for k, v in release(dev)["setValues"].items() if k != "dev.reload"} == (
        release(plain)["setValues"]
    )
