"""The CRD is rendered from the Python models: the chart's copy is that rendering, the slug
rule is the service's, every spec field is in the schema, and the API server accepts it."""

from __future__ import annotations

from pathlib import Path

import yaml
from berth_operator.crd import SERVER_IMMUTABLE_MESSAGE, render_yaml, tenant_crd
from berth_operator.resource import (
    CRD_NAME,
    MONGO_DATABASE_MESSAGE,
    MONGO_DATABASE_RULE,
    TENANT_NAME_MESSAGE,
    MongoSpec,
    PostgresSpec,
    SecretKeyRef,
    Tenant,
    TenantSpec,
    TenantStatus,
)

from service.core.tenancy import TENANT_SLUG_PATTERN
from tests.kube import ApiServer, kubectl

CHART_CRD = Path(__file__).parents[2] / "charts" / "berth" / "crds" / f"{CRD_NAME}.yaml"


def schema() -> dict:  # type: ignore[type-arg]
    return tenant_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_charts_crd_is_the_rendering_of_the_python_definition() -> None:
    assert CHART_CRD.read_text() == render_yaml(), (
        "regenerate: python -m berth_operator crd > charts/berth/crds/tenants.berth.dev.yaml"
    )


def test_the_name_rule_is_the_services_slug_pattern_as_pattern_and_cel() -> None:
    root = schema()

    assert root["properties"]["metadata"]["properties"]["name"]["pattern"] == TENANT_SLUG_PATTERN
    assert root["x-kubernetes-validations"] == [
        {
            "rule": f"self.metadata.name.matches('{TENANT_SLUG_PATTERN}')",
            "message": TENANT_NAME_MESSAGE,
        }
    ]


def test_every_field_of_the_models_is_in_the_schema_by_its_json_name() -> None:
    spec = schema()["properties"]["spec"]
    postgres = spec["properties"]["postgres"]

    def names(model: type) -> set[str]:
        return {field.alias or name for name, field in model.model_fields.items()}  # type: ignore[attr-defined]

    assert set(spec["properties"]) == names(TenantSpec)
    assert set(postgres["properties"]) == names(PostgresSpec)
    assert set(postgres["properties"]["serverSecretRef"]["properties"]) == names(SecretKeyRef)
    mongo = spec["properties"]["mongo"]
    assert set(mongo["properties"]) == names(MongoSpec)
    assert set(mongo["properties"]["serverSecretRef"]["properties"]) == names(SecretKeyRef)
    assert set(schema()["properties"]["status"]["properties"]) == names(TenantStatus)


def test_the_schema_is_structural_no_refs_unions_or_closed_objects() -> None:
    text = yaml.safe_dump(tenant_crd())

    for forbidden in ("$ref", "anyOf", "additionalProperties", "title:", "null"):
        assert forbidden not in text


def test_the_api_server_accepts_it_with_server_side_validation(kube_server: ApiServer) -> None:
    result = kubectl(
        kube_server,
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=render_yaml(),
    )

    assert CRD_NAME in result.stdout
    assert SERVER_IMMUTABLE_MESSAGE in render_yaml()


def test_a_mongo_database_is_refused_by_the_schema_and_by_the_operator_alike() -> None:
    database = schema()["properties"]["spec"]["properties"]["mongo"]["properties"]["database"]

    assert database["x-kubernetes-validations"] == [
        {"rule": MONGO_DATABASE_RULE, "message": MONGO_DATABASE_MESSAGE}
    ]
    for name in ("admin", "a.b"):
        assert Tenant.from_body({"spec": {"mongo": {"database": name}}}).problem is not None
