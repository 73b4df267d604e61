"""Settings: prefix, nested groups, lists, secrets, and production refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from service.core.config import (
    ConfigError,
    Environment,
    Settings,
    ensure_safe,
    production_problems,
)
from service.main import create_app

STRONG_SECRET = "k" * 48
SAFE_PRODUCTION = {
    "environment": "production",
    "database": {"url": "postgresql+asyncpg://berth:pw@db:5432/berth"},
    "redis": {"url": "redis://redis:6379/0"},
    "mongo": {"url": "mongodb://mongo:27017"},
    "auth": {"jwt_secret": STRONG_SECRET},
    "pagination": {"cursor_secret": "c" * 48},
}


def production(**overrides: dict[str, object]) -> Settings:
    values: dict[str, object] = {
        key: dict(v) if isinstance(v, dict) else v for key, v in SAFE_PRODUCTION.items()
    }
    for group, fields in overrides.items():
        values[group] = {**values.get(group, {}), **fields}  # type: ignore[dict-item]
    return Settings(_env_file=None, **values)


def test_environment_variables_use_one_prefix_and_nested_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BERTH_ENVIRONMENT", "staging")
    monkeypatch.setenv("BERTH_DATABASE__POOL_SIZE", "7")
    monkeypatch.setenv("BERTH_HTTP__CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("BERTH_HTTP__TRUSTED_HOSTS", '["api.example.com"]')
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")

    settings = Settings(_env_file=None)

    assert settings.environment is Environment.STAGING
    assert settings.database.pool_size == 7
    assert settings.http.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.http.trusted_hosts == ["api.example.com"]
    assert settings.otel_exporter_otlp_endpoint == "http://collector:4318"


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BERTH_SERVICE_NAME=from-dotenv\nBERTH_HTTP__PORT=9001\n")
    monkeypatch.chdir(tmp_path)

    settings = Settings()

    assert settings.service_name == "from-dotenv"
    assert settings.http.port == 9001


def test_secrets_are_masked_in_repr_and_dumps() -> None:
    settings = production()

    rendered = repr(settings) + settings.model_dump_json()

    assert STRONG_SECRET not in rendered
    assert "pw@db" not in rendered


def test_safe_production_settings_pass() -> None:
    assert production_problems(production()) == []
    ensure_safe(production())


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"auth": {"jwt_secret": "berth-local-development-secret-do-not-use"}},
         "BERTH_AUTH__JWT_SECRET"),
        ({"auth": {"jwt_secret": "short-but-not-default"}}, "BERTH_AUTH__JWT_SECRET"),
        ({"pagination": {"cursor_secret": "berth-local-cursor-secret-do-not-use"}},
         "BERTH_PAGINATION__CURSOR_SECRET"),
        ({"pagination": {"cursor_secret": "short-cursor-secret"}},
         "BERTH_PAGINATION__CURSOR_SECRET"),
        ({"http": {"cors_origins": ["*"], "cors_allow_credentials": True}},
         "BERTH_HTTP__CORS_ORIGINS"),
        ({"http": {"docs_enabled": True}}, "BERTH_HTTP__DOCS_ENABLED"),
        ({"database": {"url": "sqlite+aiosqlite:///./data/berth.db"}}, "BERTH_DATABASE__URL"),
        ({"redis": {"url": None}}, "BERTH_REDIS__URL"),
    ],
    ids=["default-secret", "short-secret", "default-cursor-secret", "short-cursor-secret",
         "cors-star-credentials", "docs-on", "sqlite", "no-redis"],
)  # fmt: skip
def test_production_refuses_unsafe_settings_naming_the_variable(
    overrides: dict[str, dict[str, object]], variable: str
) -> None:
    settings = production(**overrides)

    with pytest.raises(ConfigError) as refused:
        ensure_safe(settings)

    message = str(refused.value)
    assert message.startswith(variable)
    assert "\n" not in message
    assert STRONG_SECRET not in message


def test_docs_in_production_with_explicit_opt_in_are_allowed() -> None:
    settings = production(http={"docs_enabled": True, "docs_allow_in_production": True})

    assert production_problems(settings) == []
    assert settings.docs_enabled is True


def test_cors_star_without_credentials_is_allowed_in_production() -> None:
    assert production_problems(production(http={"cors_origins": ["*"]})) == []


def test_local_environment_accepts_the_defaults() -> None:
    settings = Settings(_env_file=None)

    assert settings.environment is Environment.LOCAL
    assert production_problems(settings) == []
    assert settings.docs_enabled is True


def test_docs_default_off_in_production() -> None:
    assert production().docs_enabled is False


def test_create_app_refuses_unsafe_production_settings() -> None:
    with pytest.raises(ConfigError, match="BERTH_AUTH__JWT_SECRET"):
        create_app(production(auth={"jwt_secret": "too-short"}))


def test_production_app_has_no_docs(make_settings: Callable[..., Settings]) -> None:
    app = create_app(production())

    paths = {getattr(route, "path", None) for route in app.routes}
    assert "/docs" not in paths
    assert "/openapi.json" not in paths


def test_production_refuses_submissions_without_mongodb() -> None:
    problems = production_problems(production(mongo={"url": None}))

    assert problems == [
        "BERTH_MONGO__URL: submissions are enabled and need MongoDB (set it, or "
        "BERTH_SUBMISSIONS__ENABLED=false)"
    ]


def test_production_without_mongodb_is_fine_when_submissions_are_off() -> None:
    settings = production(mongo={"url": None}, submissions={"enabled": False})

    assert production_problems(settings) == []


def test_duty_rates_are_bounded_and_keyed_by_upper_case_country() -> None:
    settings = Settings(_env_file=None, submissions={"duty_rates": {"cn": 0.1}})

    assert settings.submissions.duty_rates == {"CN": 0.1}
    with pytest.raises(ValidationError, match="bad: DE"):
        Settings(_env_file=None, submissions={"duty_rates": {"DE": 11}})
