"""The `Tenant` resource: its API coordinates, spec, status and annotations, defined once.

The CRD's schema is rendered from these models (`berth_operator.crd`), and the operator
parses every object it handles with them, so what the API server admits and what the
operator accepts cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)
from pydantic.alias_generators import to_camel

from service.core.tenancy import TENANT_SLUG_HELP, TENANT_SLUG_PATTERN
from service.tenants.mongo_users import (
    DATABASE_PATTERN,
    DATABASE_PREFIX,
    MAX_DATABASE_LENGTH,
    SYSTEM_DATABASES,
    USER_PREFIX,
    check_database_name,
)

GROUP = "berth.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Tenant"
PLURAL = "tenants"
SINGULAR = "tenant"
SHORT_NAMES = ("tn",)
CRD_NAME = f"{PLURAL}.{GROUP}"

FINALIZER = f"{GROUP}/finalizer"
ROTATE_ANNOTATION = f"{GROUP}/rotate-credentials"
SKIP_CLEANUP_ANNOTATION = f"{GROUP}/skip-cleanup"
TENANT_LABEL = f"{GROUP}/tenant"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "berth-operator"

# Kubernetes' own rules for the names a spec refers to.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # noqa: S105
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"  # noqa: S105
MAX_CONNECTION_LIMIT = 10_000


def holds_finalizer(body: Mapping[str, Any]) -> bool:
    """Whether an object (a Tenant, the operator's RoleBinding) still waits on the operator."""
    return FINALIZER in ((body.get("metadata") or {}).get("finalizers") or [])


def is_deleting(body: Mapping[str, Any]) -> bool:
    """Whether an object's deletion has begun (it stays while finalizers hold it)."""
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


class _Schema(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class SecretKeyRef(_Schema):
    """A key of a Secret in the Tenant's namespace."""

    name: Annotated[str, StringConstraints(pattern=SECRET_NAME_PATTERN, max_length=253)] = Field(
        description="Name of the Secret, in the Tenant's namespace."
    )
    key: Annotated[str, StringConstraints(pattern=SECRET_KEY_PATTERN, max_length=253)] = Field(
        default="url", description="Key holding the server's admin URL."
    )


class PostgresSpec(_Schema):
    server_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Admin URL of the PostgreSQL server for this tenant (a superuser, or a role with "
            "CREATEDB and CREATEROLE). Immutable. Absent: the operator's default server."
        ),
    )
    connection_limit: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CONNECTION_LIMIT,
        description=(
            "CONNECTION LIMIT of the tenant's role across all replicas; leave one for the "
            "operator's migrations. Absent: no limit."
        ),
    )


_SYSTEM_LIST = ", ".join(f"'{name}'" for name in SYSTEM_DATABASES)
MONGO_DATABASE_RULE = f"!(self in [{_SYSTEM_LIST}])"
MONGO_DATABASE_MESSAGE = (
    f"spec.mongo.database may not be a MongoDB system database ({', '.join(SYSTEM_DATABASES)})"
)
MongoDatabaseName = Annotated[
    str,
    StringConstraints(pattern=DATABASE_PATTERN, max_length=MAX_DATABASE_LENGTH),
    AfterValidator(check_database_name),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": MONGO_DATABASE_RULE, "message": MONGO_DATABASE_MESSAGE}
            ]
        }
    ),
]


class MongoSpec(_Schema):
    enabled: bool = Field(
        default=False,
        description=(
            "Give the tenant its own MongoDB database and a user that can reach only it "
            "(readWrite); off: no MongoDB keys in its registry entry and Secret."
        ),
    )
    server_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Admin URL of the MongoDB server (mongodb://user:pass@host/?authSource=admin; a "
            "user that may create users and drop databases, e.g. root). Absent: the "
            "operator's default MongoDB server. Fixed while enabled."
        ),
    )
    database: MongoDatabaseName | None = Field(
        default=None,
        description=(
            f"The tenant's MongoDB database (letters, digits, '_' and '-'; not admin, local "
            f"or config). Absent: {DATABASE_PREFIX}<slug>. Fixed while enabled. The user is "
            f"{USER_PREFIX}<slug>, defined in this database."
        ),
    )


class TenantSpec(_Schema):
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="What deleting the Tenant does to its database and role: Retain or Delete.",
    )
    suspended: bool = Field(
        default=False, description="Keep the tenant registered but refuse its requests (403)."
    )
    self_signup: bool = Field(
        default=False, description="Whether users may register themselves into this tenant."
    )
    postgres: PostgresSpec = Field(
        default_factory=PostgresSpec, description="The tenant's PostgreSQL database."
    )
    mongo: MongoSpec = Field(
        default_factory=MongoSpec, description="The tenant's MongoDB database (off by default)."
    )


class _Report(BaseModel):
    """Status models: what the operator writes; fields it no longer knows are ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


class Phase(StrEnum):
    PROVISIONING = "Provisioning"
    READY = "Ready"
    FAILED = "Failed"
    DELETING = "Deleting"


class ConditionType(StrEnum):
    DATABASE_READY = "DatabaseReady"
    CREDENTIALS_READY = "CredentialsReady"
    MIGRATED = "Migrated"
    # Present only while spec.mongo.enabled (or its cleanup after disabling fails).
    MONGO_READY = "MongoReady"
    READY = "Ready"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Report):
    type: ConditionType
    status: ConditionStatus
    reason: str = Field(max_length=1024, description="CamelCase reason.")
    message: str = Field(default="", max_length=32_768)
    last_transition_time: str = Field(description="RFC 3339 time the status last changed.")
    observed_generation: int | None = None


class ServerRef(_Report):
    """The server the tenant lives on, as first provisioned (the spec may not move it)."""

    secret_namespace: str
    secret_name: str
    secret_key: str


class MongoStatus(_Report):
    """The tenant's MongoDB user and database as provisioned; cleared once mongo is off and
    cleaned up (the spec may not move them while it is on)."""

    server: ServerRef
    database: str = Field(description="MongoDB database, the user's authSource.")
    user: str = Field(description="MongoDB user (readWrite on its database only).")


class TenantStatus(_Report):
    phase: Phase | None = None
    observed_generation: int | None = None
    database: str | None = Field(default=None, description="Database and role name.")
    schema_version: str | None = Field(default=None, description="Tenant schema revision.")
    credentials_secret: str | None = Field(default=None, description="Secret with the URL.")
    server: ServerRef | None = None
    mongo: MongoStatus | None = None
    credentials_rotation: str | None = Field(
        default=None, description=f"Last {ROTATE_ANNOTATION} value applied."
    )
    conditions: list[Condition] = Field(default_factory=list)


TENANT_NAME_RULE = TENANT_SLUG_PATTERN
TENANT_NAME_MESSAGE = f"metadata.name is the tenant slug: {TENANT_SLUG_HELP}"


class InvalidTenant(ValueError):
    """The object cannot be handled as it is (a spec the schema should have refused)."""


@dataclass(frozen=True)
class TenantRef:
    """Which Tenant: enough to address it and to name it in an Event."""

    namespace: str
    name: str
    uid: str

    @property
    def slug(self) -> str:
        return self.name


@dataclass(frozen=True)
class Tenant:
    """One Tenant as the operator sees it: parsed, validated, immutable."""

    ref: TenantRef
    generation: int
    spec: TenantSpec
    status: TenantStatus
    annotations: Mapping[str, str]
    is_deleting: bool
    # Why the spec cannot be used (the schema should have refused it); None when it can.
    problem: str | None = None

    @property
    def rotation_request(self) -> str | None:
        return self.annotations.get(ROTATE_ANNOTATION) or None

    @property
    def skips_cleanup(self) -> bool:
        return self.annotations.get(SKIP_CLEANUP_ANNOTATION, "").lower() == "true"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Tenant:
        """Parse an object as the API server returns it; a spec that does not parse is kept
        as `problem` (reported in the status, the rest still known for the report)."""
        metadata = body.get("metadata") or {}
        ref = TenantRef(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            uid=str(metadata.get("uid", "")),
        )
        problem = None
        try:
            spec = TenantSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            spec, problem = TenantSpec(), f"spec is invalid: {describe(exc)}"
        try:
            status = TenantStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = TenantStatus()  # written by someone else: start afresh
        return cls(
            ref=ref,
            generation=int(metadata.get("generation") or 0),
            spec=spec,
            status=status,
            annotations=dict(metadata.get("annotations") or {}),
            is_deleting=bool(metadata.get("deletionTimestamp")),
            problem=problem,
        )


def describe(exc: ValidationError) -> str:
    """Field paths and messages; a Tenant's spec holds no secrets, so they may be quoted."""
    return "; ".join(
        f"spec.{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )
