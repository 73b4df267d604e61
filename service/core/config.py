"""Settings: one `BERTH_` prefix, nested groups, `.env` support, secrets as SecretStr."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service import package_version

ENV_PREFIX = "BERTH_"
ENV_NESTED_DELIMITER = "__"
# Local-only default; production refuses it (see `production_problems`).
DEFAULT_JWT_SECRET = "berth-local-development-secret-do-not-use"  # noqa: S105
DEFAULT_CURSOR_SECRET = "berth-local-cursor-secret-do-not-use"  # noqa: S105
MIN_SECRET_BYTES = 32
MASKED = "**********"
DEFAULT_SQLITE_URL = "sqlite+aiosqlite:///./data/berth.db"

CommaList = Annotated[list[str], NoDecode]


def split_commas(value: Any) -> Any:
    """Accept `a,b` or a JSON list in environment variables."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        import json

        return json.loads(text)
    return [item.strip() for item in text.split(",") if item.strip()]


def _refuse_retired(values: Any, group: str, name: str) -> Any:
    """An old name for the trusted proxies must not be dropped silently: two lists (the
    limiter's, uvicorn's) became one."""
    if isinstance(values, dict) and values.get(name):
        raise ValueError(
            f"{env_name(group, name)} is gone: set {env_name('http', 'trusted_proxies')} "
            "(one list for the server and the rate limiter)"
        )
    return values


class Environment(StrEnum):
    LOCAL = "local"
    DEVELOPMENT = "development"
    TEST = "test"
    STAGING = "staging"
    PRODUCTION = "production"


class DatabaseSettings(BaseModel):
    """Control-plane database (SQLite file locally, PostgreSQL in a cluster)."""

    url: SecretStr = SecretStr(DEFAULT_SQLITE_URL)
    pool_size: int = Field(default=10, ge=1, le=500)
    max_overflow: int = Field(default=5, ge=0, le=500)
    pool_timeout_seconds: float = Field(default=10.0, gt=0)
    pool_pre_ping: bool = True
    # Only connections idle this long are pinged at checkout (0: every checkout, as
    # SQLAlchemy's pool_pre_ping does, at three round trips each with asyncpg).
    pool_ping_idle_seconds: float = Field(default=5.0, ge=0)
    pool_recycle_seconds: int = Field(default=1800, ge=-1)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    echo: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_secret_value().startswith("sqlite")


class RedisSettings(BaseModel):
    """Redis for cache, rate limits and revocations; unset means an in-process store."""

    url: SecretStr | None = None
    required: bool = True
    socket_timeout_seconds: float = Field(default=1.0, gt=0)
    max_connections: int = Field(default=64, ge=1)
    memory_max_entries: int = Field(default=10_000, ge=1)

    @property
    def is_required(self) -> bool:
        """Whether readiness and start-up wait for Redis (never without a URL)."""
        return self.url is not None and self.required


class AuthSettings(BaseModel):
    """Tokens and password hashing. HS256 signs with `jwt_secret`; EdDSA/RS256 with key files."""

    jwt_secret: SecretStr = SecretStr(DEFAULT_JWT_SECRET)
    jwt_algorithm: Literal["HS256", "EdDSA", "RS256"] = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_issuer: str = "berth"
    jwt_audience: str = "berth-api"
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=86_400)
    refresh_token_ttl_seconds: int = Field(default=30 * 86_400, ge=300)
    # argon2-cffi's RFC 9106 "low memory" profile; raising them rehashes on next login.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)
    # Hashes computed at once per process: each takes argon2_memory_kib, so this bounds the
    # memory a burst of logins can claim (queued logins wait instead).
    argon2_max_concurrent: int = Field(default=2, ge=1, le=64)
    # How long a user's role/active/token-version may be served from the key-value store;
    # writes forget it at once, this only bounds a race (service/identity/auth_state.py). 0: off.
    state_cache_seconds: int = Field(default=30, ge=0, le=300)

    @property
    def uses_key_files(self) -> bool:
        return self.jwt_algorithm != "HS256"


class PaginationSettings(BaseModel):
    """Keyset cursors: opaque, signed with a secret of their own (not the token key)."""

    cursor_secret: SecretStr = SecretStr(DEFAULT_CURSOR_SECRET)


class RateLimitSettings(BaseModel):
    """Limits as "<count>/<second|minute|hour>" (e.g. "5/minute"); Redis-backed when configured."""

    enabled: bool = True
    login_per_account: str = "5/minute"
    login_per_ip: str = "20/minute"
    register_per_ip: str = "5/hour"
    refresh_per_ip: str = "30/minute"
    writes_per_principal: str = "120/minute"

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, values: Any) -> Any:
        return _refuse_retired(values, "rate_limits", "trusted_proxies")


class TenantSettings(BaseModel):
    """Tenant registry (a directory of files, one per tenant) and per-tenant engines."""

    registry_dir: Path = Path("data/tenants")
    registry_poll_seconds: float = Field(default=1.0, gt=0)
    sqlite_dir: Path = Path("data/tenant-dbs")
    engine_cache_size: int = Field(default=32, ge=1)
    # Overflow connections are closed when returned: under steady load above pool_size that
    # is a new connection (TLS, auth) per request. So the bound is the pool itself by default.
    engine_pool_size: int = Field(default=5, ge=1)
    engine_max_overflow: int = Field(default=0, ge=0)
    engine_idle_seconds: float = Field(default=300.0, gt=0)
    # How long a request waits for an engine slot when every cached engine is in use (then
    # 503): the cache bounds connections, so a burst of tenants queues instead of connecting.
    engine_wait_seconds: float = Field(default=10.0, gt=0)


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    graceful_shutdown_seconds: float = Field(default=20.0, ge=0)
    keepalive_seconds: int = Field(default=5, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # Request headers, bounded as common proxies bound them (nginx: 8 KiB lines x 4 by
    # default, Envoy 60 KiB): beyond any of these the answer is 431 (service/core/protocol.py).
    max_header_bytes: int = Field(default=65_536, ge=1024)
    max_header_line_bytes: int = Field(default=16_384, ge=256)
    max_headers: int = Field(default=100, ge=8)
    cors_origins: CommaList = Field(default_factory=list)
    cors_allow_credentials: bool = False
    trusted_hosts: CommaList = Field(default_factory=list)
    # Proxies (IPs or CIDRs) whose X-Forwarded-For names the client and X-Forwarded-Proto the
    # scheme (service/core/proxies.py); nobody by default, not even 127.0.0.1.
    trusted_proxies: CommaList = Field(default_factory=list)
    docs_enabled: bool | None = None
    docs_allow_in_production: bool = False

    _split = field_validator("cors_origins", "trusted_hosts", "trusted_proxies", mode="before")(
        split_commas
    )

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, values: Any) -> Any:
        return _refuse_retired(values, "http", "forwarded_allow_ips")


class CacheSettings(BaseModel):
    """Read-through caches (Redis, or the in-process store locally); every entry has a TTL."""

    enabled: bool = True
    article_ttl_seconds: int = Field(default=60, ge=1, le=86_400)
    # The coherent in-process cache in front of Redis (service/core/local_cache.py): its bound
    # in bytes of keys and values (0 turns it off), and the backstop TTL of each entry.
    local_max_bytes: int = Field(default=32 * 1024 * 1024, ge=0, le=4 * 1024**3)
    local_ttl_seconds: float = Field(default=5.0, gt=0, le=300)
    # The invalidation connection is pinged this often; with no answer for two intervals
    # the local cache is bypassed, so even a cut that closes no socket is noticed.
    local_heartbeat_seconds: float = Field(default=0.5, gt=0, le=30)


class MongoSettings(BaseModel):
    """The MongoDB server tenant documents live on (submissions).

    A tenant's registry entry may carry its own `mongo_url` (the operator's least-privilege
    user); a tenant without one uses `url` with the database `<database_prefix><slug>`
    (laptop, tests, a shared dev server). Unset: the submissions endpoints answer 503 and
    readiness reports MongoDB as not configured.
    """

    url: SecretStr | None = None
    database_prefix: str = Field(default="berth_", max_length=32, pattern=r"^[A-Za-z0-9_]*$")
    # Per tenant client: the bounded LRU keeps at most `client_cache_size` clients, each with
    # at most `pool_size` connections (the connection budget, as for PostgreSQL).
    client_cache_size: int = Field(default=32, ge=1)
    pool_size: int = Field(default=5, ge=1, le=100)
    client_idle_seconds: float = Field(default=300.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    # Server selection and each operation: an unreachable server is a 503 in this time.
    timeout_seconds: float = Field(default=5.0, gt=0)


class SubmissionSettings(BaseModel):
    """Customs-style declarations and the worker that processes them (service/submissions)."""

    enabled: bool = True
    worker_enabled: bool = True
    # Submissions one replica processes at once.
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    # An idle worker looks for work this often (a POST on this replica wakes it at once).
    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # A claim is held this long; a worker that dies lets it expire back to the queue.
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_attempts: int = Field(default=5, ge=1, le=50)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=60.0, gt=0)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60, le=7 * 86_400)
    stats_window_days: int = Field(default=30, ge=1, le=366)
    # Duty estimate: a rate per ISO 3166 origin country, `default_duty_rate` for the rest.
    duty_rates: dict[str, float] = Field(default_factory=dict)
    default_duty_rate: float = Field(default=0.05, ge=0, le=10)

    @field_validator("duty_rates")
    @classmethod
    def _rates_in_range(cls, rates: dict[str, float]) -> dict[str, float]:
        bad = sorted(code for code, rate in rates.items() if not 0 <= rate <= 10)
        if bad:
            raise ValueError(f"duty rates must be within 0..10 (bad: {', '.join(bad)})")
        return {code.upper(): rate for code, rate in rates.items()}


class GcSettings(BaseModel):
    """The garbage collector of a serving process, set once start-up is done
    (service/core/gc_policy.py; measured in docs/benchmarks.md)."""

    # Move everything start-up built (modules, routes, settings) out of the collector's
    # scans for good: it lives as long as the process anyway.
    freeze_after_startup: bool = True
    # Python's `gc.set_threshold`: net new container objects before a young collection, and
    # young (then middle) collections before the next older one.
    gen0_threshold: int = Field(default=10_000, ge=100, le=1_000_000)
    gen1_threshold: int = Field(default=10, ge=1, le=1000)
    gen2_threshold: int = Field(default=10, ge=1, le=1000)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["json", "console", "auto"]


class LogSettings(BaseModel):
    """How a berth process logs (the service and the operator share the format)."""

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"


class ObservabilitySettings(LogSettings):
    metrics_enabled: bool = True
    # Serve /metrics on this port instead of the API's (0.0.0.0 or BERTH_HTTP__HOST), so the
    # Service an Ingress exposes carries no metrics; unset: /metrics on the API port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    readiness_cache_seconds: float = Field(default=2.0, ge=0)
    readiness_timeout_seconds: float = Field(default=1.0, gt=0)
    # Tenants whose requests are counted under their own `tenant` label (every other tenant is
    # "other"): a label per tenant would grow without bound, this list bounds it.
    metrics_tenants: CommaList = Field(default_factory=list)


class Settings(BaseSettings):
    """Every setting of the service; read once by the CLI or `create_app`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    environment: Environment = Environment.LOCAL
    service_name: str = "berth"
    version: str = Field(default_factory=package_version)
    commit: str = "unknown"
    startup_retries: int = Field(default=5, ge=1, le=100)
    startup_retry_max_wait_seconds: float = Field(default=2.0, gt=0)
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_ENDPOINT", "BERTH_OTEL_ENDPOINT"),
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    pagination: PaginationSettings = Field(default_factory=PaginationSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    tenants: TenantSettings = Field(default_factory=TenantSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    mongo: MongoSettings = Field(default_factory=MongoSettings)
    submissions: SubmissionSettings = Field(default_factory=SubmissionSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    gc: GcSettings = Field(default_factory=GcSettings)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @cached_property
    def docs_enabled(self) -> bool:
        """Docs default to on locally and off in production."""
        if self.http.docs_enabled is None:
            return not self.is_production
        return self.http.docs_enabled


def env_name(*path: str, prefix: str = ENV_PREFIX) -> str:
    """The environment variable that sets a (nested) field, e.g. BERTH_DATABASE__URL."""
    return prefix + ENV_NESTED_DELIMITER.join(part.upper() for part in path)


def production_problems(settings: Settings) -> list[str]:
    """One line per setting that makes a production start unsafe; empty when fine."""
    if not settings.is_production:
        return []
    problems: list[str] = []
    if settings.auth.uses_key_files:
        for field in ("jwt_private_key_file", "jwt_public_key_file"):
            key_file = getattr(settings.auth, field)
            if key_file is None or not key_file.is_file():
                problems.append(f"{env_name('auth', field)}: {settings.auth.jwt_algorithm} needs "
                                "a readable key file")  # fmt: skip
    else:
        problems += _weak_secret(
            ("auth", "jwt_secret"), settings.auth.jwt_secret, DEFAULT_JWT_SECRET
        )
    problems += _weak_secret(
        ("pagination", "cursor_secret"), settings.pagination.cursor_secret, DEFAULT_CURSOR_SECRET
    )
    if "*" in settings.http.cors_origins and settings.http.cors_allow_credentials:
        problems.append(
            f"{env_name('http', 'cors_origins')}: '*' cannot be combined with "
            f"{env_name('http', 'cors_allow_credentials')}=true (list the origins)"
        )
    if settings.docs_enabled and not settings.http.docs_allow_in_production:
        problems.append(
            f"{env_name('http', 'docs_enabled')}: API docs are on in production (set "
            f"{env_name('http', 'docs_allow_in_production')}=true to opt in)"
        )
    if settings.database.is_sqlite:
        problems.append(
            f"{env_name('database', 'url')}: SQLite is for local use, "
            "point it at PostgreSQL (postgresql+asyncpg://...)"
        )
    if settings.redis.url is None:
        problems.append(
            f"{env_name('redis', 'url')}: Redis is required in production "
            "(rate limits, revocations and cache must be shared by all replicas)"
        )
    if settings.submissions.enabled and settings.mongo.url is None:
        problems.append(
            f"{env_name('mongo', 'url')}: submissions are enabled and need MongoDB (set it, or "
            f"{env_name('submissions', 'enabled')}=false)"
        )
    return problems


def _weak_secret(path: tuple[str, str], value: SecretStr, default: str) -> list[str]:
    secret = value.get_secret_value()
    if secret != default and len(secret.encode()) >= MIN_SECRET_BYTES:
        return []
    return [f"{env_name(*path)}: must be a random secret of at least {MIN_SECRET_BYTES} bytes, "
            "not the default"]  # fmt: skip


class ConfigError(RuntimeError):
    """Raised when settings are unsafe for the chosen environment."""


def ensure_safe(settings: Settings) -> None:
    """Refuse unsafe production settings with a one-line error naming the variable."""
    problems = production_problems(settings)
    if problems:
        raise ConfigError(problems[0] if len(problems) == 1 else "; ".join(problems))


def describe_validation_error(exc: ValidationError, *, prefix: str = ENV_PREFIX) -> str:
    """One line naming the environment variable of each invalid setting."""
    return "; ".join(
        f"{env_name(*(str(part) for part in error['loc']), prefix=prefix)}: {error['msg']}"
        for error in exc.errors(include_input=False)
    )


def load_settings() -> Settings:
    """Settings from the environment and `.env`; a one-line ConfigError when invalid or
    unsafe for the environment (the CLI prints it and exits 2)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    ensure_safe(settings)
    return settings


def safe_url(url: str) -> str:
    """A URL with its password masked, fit for logs and error messages."""
    # Imported here: SQLAlchemy is heavy, and check-config needs it only for --show.
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return MASKED  # not a URL we can take apart: show none of it


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as the service applies them, fit to print (`check-config --show`).

    Secrets are masked, URLs only in their password (a SQLite path holds none), and
    `redis.required` says whether Redis is really waited for (never without a URL).
    """
    shown = _shown(settings)
    shown["redis"]["required"] = settings.redis.is_required
    return shown


def _shown(model: BaseModel) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            shown[name] = _shown(value)
        elif isinstance(value, SecretStr):
            secret = value.get_secret_value()
            shown[name] = safe_url(secret) if name.endswith("url") else MASKED
        else:
            shown[name] = to_jsonable_python(value)
    return shown
