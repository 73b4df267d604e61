"""The `tenants.berth.dev` CustomResourceDefinition, rendered from `berth_operator.resource`.

`python -m berth_operator crd` prints it; the chart ships the output
(`charts/berth/crds/tenants.berth.dev.yaml`) and a test fails when the two differ.

Pydantic's JSON Schema becomes a Kubernetes structural schema: `$ref`s are inlined,
`Optional` is "not required" (no `null`), titles and `additionalProperties: false` go
(structural schemas prune unknown fields instead; `kubectl apply` refuses them with
server-side field validation). The slug rule reaches the API server twice: as the name's
`pattern` and as a CEL rule, both from `service.core.tenancy.TENANT_SLUG_PATTERN`.
"""

from __future__ import annotations

from typing import Any

import yaml

from berth_operator.resource import (
    API_VERSION,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    TENANT_NAME_MESSAGE,
    TENANT_NAME_RULE,
    VERSION,
    ConditionType,
    TenantSpec,
    TenantStatus,
)

JsonSchema = dict[str, Any]

_KEPT = (
    "type",
    "description",
    "enum",
    "pattern",
    "maxLength",
    "minimum",
    "maximum",
    "default",
    "x-kubernetes-validations",
)
MAX_SLUG_LENGTH = 40
# Only both-present transitions are checked by CEL, so the rule lives on `spec` (always
# present: it defaults to {}) and checks presence as well as the value. Written with `?:`
# and `||` rather than `==` between booleans or objects: this API server's cost estimate of
# those exceeds its CEL budget a hundredfold.
_HAS = "has({0}.postgres) && has({0}.postgres.serverSecretRef)"
_BOTH_OR_NEITHER = (
    f"({_HAS.format('self')}) ? ({_HAS.format('oldSelf')}) : !({_HAS.format('oldSelf')})"
)
_NOT_BOTH = " || ".join(
    f"!has({side}.postgres{field})"
    for side in ("self", "oldSelf")
    for field in ("", ".serverSecretRef")
)
_SAME = "self.postgres.serverSecretRef.{0} == oldSelf.postgres.serverSecretRef.{0}"
SERVER_IMMUTABLE_RULE = (
    f"({_BOTH_OR_NEITHER}) && ({_NOT_BOTH} || ({_SAME.format('name')} && {_SAME.format('key')}))"
)
SERVER_IMMUTABLE_MESSAGE = (
    "spec.postgres.serverSecretRef is immutable: a tenant cannot move to another server"
)


def _resolve(node: JsonSchema, definitions: dict[str, JsonSchema]) -> JsonSchema:
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        return {**_resolve(target, definitions), **siblings}
    if "anyOf" in node:
        choices = [choice for choice in node["anyOf"] if choice.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"only Optional[X] unions have a structural form: {node}")
        siblings = {key: value for key, value in node.items() if key != "anyOf"}
        return {**_resolve(choices[0], definitions), **siblings}
    return node


def structural(node: JsonSchema, definitions: dict[str, JsonSchema]) -> JsonSchema:
    """One pydantic JSON Schema node as a Kubernetes structural schema node."""
    node = _resolve(node, definitions)
    out: JsonSchema = {key: node[key] for key in _KEPT if key in node}
    if out.get("default", ...) is None:
        del out["default"]
    if node.get("type") == "object":
        properties = node.get("properties", {})
        out["properties"] = {
            name: structural(child, definitions) for name, child in properties.items()
        }
        if node.get("required"):
            out["required"] = list(node["required"])
    if node.get("type") == "array":
        out["items"] = structural(node["items"], definitions)
    return out


def _schema_of(model: type[TenantSpec] | type[TenantStatus]) -> JsonSchema:
    document = model.model_json_schema(by_alias=True, mode="serialization")
    return structural(document, document.get("$defs", {}))


def _status_schema() -> JsonSchema:
    schema = _schema_of(TenantStatus)
    conditions = schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    return schema


def _spec_schema() -> JsonSchema:
    schema = _schema_of(TenantSpec)
    schema["default"] = {}
    schema["x-kubernetes-validations"] = [
        {"rule": SERVER_IMMUTABLE_RULE, "message": SERVER_IMMUTABLE_MESSAGE}
    ]
    return schema


def open_api_schema() -> JsonSchema:
    name_rule = f"self.metadata.name.matches('{TENANT_NAME_RULE}')"
    return {
        "type": "object",
        "description": "A berth tenant: its own database, login role and credentials.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "pattern": TENANT_NAME_RULE,
                        "maxLength": MAX_SLUG_LENGTH,
                    }
                },
            },
            "spec": _spec_schema(),
            "status": _status_schema(),
        },
        "x-kubernetes-validations": [{"rule": name_rule, "message": TENANT_NAME_MESSAGE}],
    }


def _printer_columns() -> list[JsonSchema]:
    ready = f'.status.conditions[?(@.type=="{ConditionType.READY}")].status'
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Database", "type": "string", "jsonPath": ".status.database"},
        {"name": "Schema", "type": "string", "jsonPath": ".status.schemaVersion"},
        {"name": "Ready", "type": "string", "jsonPath": ready},
        {"name": "Mongo", "type": "string", "jsonPath": ".status.mongo.database", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def tenant_crd() -> JsonSchema:
    """The CRD as a manifest (a dict ready for YAML or the API server)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "listKind": f"{KIND}List",
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": open_api_schema()},
                }
            ],
        },
    }


HEADER = (
    f"# {CRD_NAME} ({API_VERSION}): generated by `python -m berth_operator crd` from\n"
    "# operator/berth_operator/resource.py. Do not edit; regenerate.\n"
)


def render_yaml() -> str:
    return HEADER + str(yaml.safe_dump(tenant_crd(), sort_keys=False, width=100))
