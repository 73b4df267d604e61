"""The tenant registry: real files and symlinks in a tmp dir, including the kubelet's layout
for a mounted Secret (`..<timestamp>/` dirs, `..data` swapped atomically, per-key links)."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from service.tenants import registry as registry_module
from service.tenants.registry import (
    DATA_LINK,
    LoadedFile,
    TenantRegistry,
    entry_json,
    fingerprint,
    remove_entry,
    write_entry,
)
from service.tenants.schemas import TenantEntry, TenantStatus
from tests.service.tenants.conftest import sqlite_entry
from tests.support import json_lines, wait_for

SECRET_PASSWORD = "s3cret-pw-never-logged"


def pg_entry(slug: str, password: str = SECRET_PASSWORD, **fields: object) -> TenantEntry:
    url = f"postgresql+asyncpg://tenant_{slug}:{password}@db:5432/tenant_{slug}"
    return TenantEntry.model_validate({"slug": slug, "database_url": url, **fields})


def entry_document(entry: TenantEntry) -> dict[str, object]:
    return dict(json.loads(entry_json(entry)))


class SecretVolume:
    """The layout the kubelet writes for a Secret volume, updated the way it updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def publish(self, files: dict[str, bytes]) -> None:
        """Write a new timestamped dir, swap `..data` to it atomically, fix the key links."""
        self.generation += 1
        data_dir = self.root / f"..2026_11_23_12_00_00.{self.generation:06d}"
        data_dir.mkdir()
        for name, content in files.items():
            (data_dir / name).write_bytes(content)
        staging = self.root / "..data_tmp"
        staging.symlink_to(data_dir.name)
        staging.replace(self.root / DATA_LINK)  # os.replace, i.e. rename(2): atomic
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"{DATA_LINK}/{name}")
        for link in self.root.iterdir():  # keys gone from the Secret lose their link
            if link.is_symlink() and not link.name.startswith("..") and link.name not in files:
                link.unlink()


def test_entries_are_read_by_slug_and_secrets_stay_secret(registry_dir: Path) -> None:
    write_entry(registry_dir, pg_entry("acme", self_signup=True))
    write_entry(registry_dir, pg_entry("beta", status=TenantStatus.SUSPENDED))

    registry = TenantRegistry(registry_dir)
    changes = registry.refresh()

    assert changes.added == {"acme", "beta"}
    assert registry.slugs() == ["acme", "beta"]
    acme = registry.get("acme")
    assert acme is not None
    assert acme.self_signup is True
    assert acme.database_url.get_secret_value().endswith(":5432/tenant_acme")
    assert SECRET_PASSWORD not in repr(acme)
    beta = registry.get("beta")
    assert beta is not None
    assert beta.status is TenantStatus.SUSPENDED
    assert registry.get("nobody") is None


def test_write_entry_is_atomic_0600_and_round_trips(registry_dir: Path) -> None:
    entry = pg_entry("acme", mongo_url="mongodb://u:p@mongo/", mongo_database="acme")

    path = write_entry(registry_dir, entry)

    assert path == registry_dir / "acme.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in registry_dir.iterdir()] == ["acme.json"]  # no temp file left
    document = json.loads(path.read_bytes())
    assert document["database_url"] == entry.database_url.get_secret_value()
    assert document["mongo_url"] == "mongodb://u:p@mongo/"
    assert TenantEntry.model_validate(document) == entry
    assert remove_entry(registry_dir, "acme") is True
    assert remove_entry(registry_dir, "acme") is False


MALFORMED = [
    pytest.param("bad-json.json", b'{"slug": "bad-json", "database_url": ', "json_invalid",
                 id="bad-json"),
    pytest.param("Not_A_Slug.json", None, "file name is not a valid tenant slug",
                 id="file-name-not-a-slug"),
    pytest.param("other.json", "mismatch", "does not match the file name", id="slug-mismatch"),
    pytest.param("no-url.json", b'{"slug": "no-url"}', "database_url: missing", id="no-url"),
    pytest.param("bad-status.json", b'{"slug": "bad-status", "status": "on", "database_url": '
                 b'"postgresql://u:' + SECRET_PASSWORD.encode() + b'@h/d"}', "status: enum",
                 id="unknown-status"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "reason"), MALFORMED)
def test_a_malformed_entry_is_logged_without_secrets_and_skipped(
    registry_dir: Path, log_stream: io.StringIO, name: str, content: bytes | str | None, reason: str
) -> None:
    write_entry(registry_dir, pg_entry("acme"))
    if content is None:  # a valid entry under a file name that is not a slug
        content = entry_json(pg_entry("fine"))
    elif content == "mismatch":  # a valid entry for another slug
        content = entry_json(pg_entry("someone-else"))
    assert isinstance(content, bytes)
    (registry_dir / name).write_bytes(content)

    registry = TenantRegistry(registry_dir)
    registry.refresh()

    assert registry.slugs() == ["acme"]  # the good entry keeps working
    assert reason in registry.problems()[name]
    [skipped] = [line for line in json_lines(log_stream.getvalue())
                 if line["event"] == "tenant_entry_skipped"]  # fmt: skip
    assert skipped["file"] == name
    assert reason in str(skipped["reason"])
    assert skipped["level"] == "warning"
    assert SECRET_PASSWORD not in log_stream.getvalue()


def test_a_fixed_entry_comes_back_and_a_broken_one_goes_away(registry_dir: Path) -> None:
    path = registry_dir / "acme.json"
    path.write_bytes(b"{not json")
    registry = TenantRegistry(registry_dir)
    registry.refresh()
    assert registry.get("acme") is None

    write_entry(registry_dir, pg_entry("acme"))
    assert registry.refresh().added == {"acme"}

    path.write_bytes(b"[]")  # in place, like an editor
    assert registry.refresh().removed == {"acme"}
    assert registry.get("acme") is None


def test_only_files_whose_stat_changed_are_read_again(
    registry_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_entry(registry_dir, pg_entry("acme"))
    write_entry(registry_dir, pg_entry("beta"))
    registry = TenantRegistry(registry_dir)
    registry.refresh()
    reads: list[str] = []
    real_load_file = registry_module.load_file

    def counting_load_file(path: Path) -> LoadedFile:
        reads.append(path.name)
        return real_load_file(path)

    monkeypatch.setattr(registry_module, "load_file", counting_load_file)
    before = fingerprint(registry_dir)

    assert not registry.refresh()
    assert fingerprint(registry_dir) == before
    assert reads == []

    write_entry(registry_dir, pg_entry("acme", password="rotated"))  # atomic: a new inode
    changes = registry.refresh()
    assert changes.changed == {"acme"}
    assert reads == ["acme.json"]
    entry = registry.get("acme")
    assert entry is not None
    assert "rotated" in entry.database_url.get_secret_value()


def test_a_missing_directory_is_an_empty_registry_until_it_appears(
    tmp_path: Path, log_stream: io.StringIO
) -> None:
    directory = tmp_path / "not-mounted-yet"
    registry = TenantRegistry(directory)

    assert not registry.refresh()
    assert registry.slugs() == []
    assert "tenant_registry_missing" in log_stream.getvalue()

    write_entry(directory, pg_entry("acme"))
    assert registry.refresh().added == {"acme"}


def test_kubernetes_atomic_data_swap_adds_changes_and_removes_entries(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish({"acme.json": entry_json(pg_entry("acme")),
                    "beta.json": entry_json(pg_entry("beta"))})  # fmt: skip
    registry = TenantRegistry(tmp_path)
    assert registry.refresh().added == {"acme", "beta"}
    assert (tmp_path / "acme.json").is_symlink()

    volume.publish({
        "acme.json": entry_json(pg_entry("acme", status=TenantStatus.SUSPENDED)),
        "gamma.json": entry_json(pg_entry("gamma")),
    })  # fmt: skip
    changes = registry.refresh()

    assert changes.added == {"gamma"}
    assert changes.removed == {"beta"}
    assert changes.changed == {"acme"}
    acme = registry.get("acme")
    assert acme is not None
    assert acme.status is TenantStatus.SUSPENDED
    assert registry.slugs() == ["acme", "gamma"]  # `..data` and the timestamped dirs: ignored


def test_a_dangling_link_mid_swap_is_an_absent_entry_not_an_error(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish({"acme.json": entry_json(pg_entry("acme"))})
    (tmp_path / "beta.json").symlink_to(f"{DATA_LINK}/beta.json")  # target not there (yet)

    registry = TenantRegistry(tmp_path)
    registry.refresh()

    assert registry.slugs() == ["acme"]
    assert registry.problems() == {}


async def test_the_watcher_follows_a_data_swap_without_a_restart(tmp_path: Path) -> None:
    volume = SecretVolume(tmp_path)
    volume.publish({"acme.json": entry_json(pg_entry("acme"))})
    registry = TenantRegistry(tmp_path)
    await registry.refresh_async()
    polls: list[bool] = []

    async def on_poll(changes: object) -> None:
        polls.append(bool(changes))

    registry.start_watching(0.02, on_poll)
    try:
        volume.publish({"beta.json": entry_json(pg_entry("beta"))})
        await wait_for(lambda: registry.slugs() == ["beta"])
    finally:
        await registry.close()

    assert True in polls  # the hook saw the change
    assert polls.count(True) == 1  # and only once: unchanged polls are no-ops


async def test_a_failing_poll_hook_does_not_stop_the_watcher(
    registry_dir: Path, log_stream: io.StringIO
) -> None:
    registry = TenantRegistry(registry_dir)
    calls = 0

    async def failing(changes: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("hook failed")

    registry.start_watching(0.01, failing)
    try:
        await wait_for(lambda: calls >= 3)
        write_entry(registry_dir, pg_entry("acme"))
        await wait_for(lambda: registry.get("acme") is not None)
    finally:
        await registry.close()
    assert "tenant_registry_poll_failed" in log_stream.getvalue()


def test_a_registry_read_once_gives_entries_and_problems(
    registry_dir: Path, tmp_path: Path
) -> None:
    write_entry(registry_dir, sqlite_entry(tmp_path / "a.db", "acme"))
    (registry_dir / "broken.json").write_text("{")
    (registry_dir / "notes.txt").write_text("not an entry")

    registry = TenantRegistry.read(registry_dir)

    assert [entry.slug for entry in registry.entries()] == ["acme"]
    assert list(registry.problems()) == ["broken.json"]
