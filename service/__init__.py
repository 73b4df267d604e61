"""berth: a Kubernetes-native FastAPI service with operator-provisioned tenant databases."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version (pyproject.toml is the one source of truth)."""
    try:
        return version("berth")
    except PackageNotFoundError:  # running from a bare source tree
        return "0.0.0+unknown"
