"""The collector's policy, applied at the end of every serving process's start-up."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest
from asgi_lifespan import LifespanManager

from service.core.config import GcSettings, Settings
from service.core.gc_policy import apply_gc_policy
from service.main import create_app


@pytest.fixture(autouse=True)
def restored_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_default_policy_freezes_start_up_and_widens_the_young_generation() -> None:
    gc.set_threshold(700, 10, 10)  # Python's own defaults

    apply_gc_policy(GcSettings())

    assert gc.get_threshold() == (10_000, 10, 10)
    assert gc.get_freeze_count() > 0


def test_freezing_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))

    apply_gc_policy(GcSettings(freeze_after_startup=False, gen0_threshold=2000))

    assert frozen == []
    assert gc.get_threshold() == (2000, 10, 10)


async def test_start_up_applies_the_configured_policy(
    make_settings: Callable[..., Settings], migrated_sqlite: str
) -> None:
    gc.set_threshold(700, 10, 10)
    app = create_app(make_settings(gc={"gen0_threshold": 5000, "gen2_threshold": 20}))

    assert gc.get_threshold() == (700, 10, 10)  # building the app changes nothing
    async with LifespanManager(app):
        assert gc.get_threshold() == (5000, 10, 20)
        assert gc.get_freeze_count() > 0


def test_the_thresholds_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_GC__GEN0_THRESHOLD", "20000")
    monkeypatch.setenv("BERTH_GC__FREEZE_AFTER_STARTUP", "false")

    settings = Settings(_env_file=None)

    assert (settings.gc.gen0_threshold, settings.gc.freeze_after_startup) == (20000, False)
    with pytest.raises(ValueError, match="gen0_threshold"):
        GcSettings(gen0_threshold=0)  # 0 would turn the collector off: never by accident
