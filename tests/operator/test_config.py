"""The operator's settings as the Deployment's environment gives them."""

from __future__ import annotations

import pytest
from berth_operator.config import POD_NAMESPACE_ENV, load_operator_settings, operator_env_name

from service.core.config import ConfigError


def test_namespaces_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(operator_env_name("namespaces"), " shop, billing ,,")

    assert load_operator_settings().namespaces == ["shop", "billing"]


def test_no_namespaces_means_every_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(operator_env_name("namespaces"), "")

    assert load_operator_settings().namespaces == []


def test_a_metrics_port_of_zero_turns_the_endpoint_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(operator_env_name("metrics_port"), "0")

    assert load_operator_settings().metrics_port == 0


def test_a_lease_renewed_less_often_than_half_its_duration_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One late renewal must not lose the Lease: renew at least twice per duration."""
    monkeypatch.setenv(operator_env_name("lease", "duration_seconds"), "10")
    monkeypatch.setenv(operator_env_name("lease", "renew_seconds"), "6")

    with pytest.raises(ConfigError, match="renew_seconds must be at most half"):
        load_operator_settings()


def test_a_fractional_lease_duration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Lease holds whole seconds: 2.5 would be written as 2 and expire early."""
    monkeypatch.setenv(operator_env_name("lease", "duration_seconds"), "2.5")

    with pytest.raises(ConfigError, match="DURATION_SECONDS"):
        load_operator_settings()


def test_the_default_mongo_server_comes_from_the_variables_the_chart_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(POD_NAMESPACE_ENV, "berth")
    monkeypatch.setenv("BERTH_OPERATOR__DEFAULT_MONGO_SERVER__NAME", "berth-mongo-admin")

    settings = load_operator_settings()

    assert (settings.default_mongo_server.name, settings.default_mongo_server.key) == (
        "berth-mongo-admin", "url",
    )  # fmt: skip
    assert settings.default_mongo_server_namespace == "berth"
    monkeypatch.setenv("BERTH_OPERATOR__DEFAULT_MONGO_SERVER__KEY", "admin-url")
    monkeypatch.setenv("BERTH_OPERATOR__DEFAULT_MONGO_SERVER__NAMESPACE", "databases")
    settings = load_operator_settings()
    assert settings.default_mongo_server.key == "admin-url"
    assert settings.default_mongo_server_namespace == "databases"
