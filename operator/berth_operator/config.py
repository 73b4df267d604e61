"""The operator's settings: environment variables `BERTH_OPERATOR__*`, in the service's style."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from berth_operator.resource import SECRET_KEY_PATTERN, SECRET_NAME_PATTERN
from service.core.config import (
    ENV_NESTED_DELIMITER,
    ConfigError,
    LogSettings,
    describe_validation_error,
    env_name,
    split_commas,
)

ENV_PREFIX = "BERTH_OPERATOR__"
# The namespace the operator runs in (the chart sets it from the downward API).
POD_NAMESPACE_ENV = "POD_NAMESPACE"
DEFAULT_NAMESPACE = "default"

SecretName = Annotated[str, Field(pattern=SECRET_NAME_PATTERN, max_length=253)]


class ServerSecret(BaseModel):
    """Where the default server's admin URL is: a key of a Secret in the operator's namespace
    (or `namespace`)."""

    name: SecretName | None = None
    key: Annotated[str, Field(pattern=SECRET_KEY_PATTERN, max_length=253)] = "url"
    namespace: SecretName | None = None


class LeaseSettings(BaseModel):
    """The Lease that keeps a second operator from acting at the same time."""

    name: SecretName = "berth-operator"
    duration_seconds: int = Field(default=15, ge=2)
    renew_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _renew_in_time(self) -> LeaseSettings:
        if self.renew_seconds * 2 > self.duration_seconds:
            raise ValueError("renew_seconds must be at most half of duration_seconds")
        return self


class OperatorSettings(BaseSettings):
    """Every setting of the operator; read once at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        extra="ignore",
        frozen=True,
    )

    # Namespaces whose Tenants are handled; empty: every namespace (needs a ClusterRole).
    namespaces: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Name of the registry Secret written in each Tenant's namespace (the service mounts it).
    registry_secret: SecretName = "berth-tenant-registry"  # noqa: S105 - a name
    default_server: ServerSecret = Field(default_factory=ServerSecret)
    # The MongoDB server of Tenants with spec.mongo.enabled and no spec.mongo.serverSecretRef.
    default_mongo_server: ServerSecret = Field(default_factory=ServerSecret)
    # How often every Tenant is checked for drift (and brought to the newest schema).
    timer_seconds: float = Field(default=300.0, ge=5)
    # Tenants provisioned or migrated at once (each holds a few database connections).
    max_concurrent_reconciles: int = Field(default=8, ge=1, le=256)
    # Backoff for temporary failures: first delay, doubled per retry up to the cap.
    retry_first_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    liveness_port: int = Field(default=8080, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=0, le=65535)  # 0: no metrics endpoint
    bind_host: str = "0.0.0.0"
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    _split = field_validator("namespaces", mode="before")(split_commas)

    @property
    def own_namespace(self) -> str:
        return os.environ.get(POD_NAMESPACE_ENV) or DEFAULT_NAMESPACE

    @property
    def default_server_namespace(self) -> str:
        return self.default_server.namespace or self.own_namespace

    @property
    def default_mongo_server_namespace(self) -> str:
        return self.default_mongo_server.namespace or self.own_namespace


def operator_env_name(*path: str) -> str:
    """The environment variable of a (nested) operator setting."""
    return env_name(*path, prefix=ENV_PREFIX)


def load_operator_settings() -> OperatorSettings:
    """Settings from the environment; a one-line ConfigError naming the variable."""
    try:
        return OperatorSettings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, prefix=ENV_PREFIX)) from None
