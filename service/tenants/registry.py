"""The tenant registry: a directory of `<slug>.json` files, one `TenantEntry` each.

In Kubernetes the directory is a Secret volume the operator maintains; the kubelet updates
it by writing a new timestamped directory and swapping the `..data` symlink atomically, and
every `<slug>.json` is a symlink through `..data`. Locally the CLI writes plain files (atomic
rename). Either way a poll compares a cheap fingerprint (the `..data` target plus each entry
file's name, inode, size and times) and re-reads only the files whose stat changed.

A malformed entry is logged (file name and error kinds, never values) and skipped; the rest
keep working. Reads never raise: the service must not fall over because of one bad file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import ValidationError

from service.core.logging import get_logger
from service.core.tenancy import is_valid_tenant_slug
from service.tenants.metrics import TenantMetrics
from service.tenants.schemas import ENTRY_SUFFIX, TenantEntry

log = get_logger(__name__)

# The kubelet's atomic-writer layout: `..data` -> `..<timestamp>/`, `<key>` -> `..data/<key>`.
DATA_LINK = "..data"
# An entry is a few hundred bytes; anything far larger is not an entry (and is not read).
MAX_ENTRY_BYTES = 64 * 1024
ENTRY_FILE_MODE = 0o600

# (device, inode, size, mtime_ns, ctime_ns): changes on any write, replace or chmod.
FileKey = tuple[int, int, int, int, int]


@dataclass(frozen=True)
class Fingerprint:
    """What one cheap scan of the directory sees; equal fingerprints mean nothing changed."""

    present: bool
    data_target: str | None = None
    files: tuple[tuple[str, FileKey], ...] = ()


@dataclass(frozen=True)
class LoadedFile:
    """One entry file as last read: the entry, or why it was skipped."""

    key: FileKey | None
    entry: TenantEntry | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Snapshot:
    fingerprint: Fingerprint | None
    files: Mapping[str, LoadedFile] = field(default_factory=dict)
    entries: Mapping[str, TenantEntry] = field(default_factory=dict)
    fresh: frozenset[str] = frozenset()  # files read by this scan (the rest came from cache)


@dataclass(frozen=True)
class RegistryChanges:
    """Slugs whose entries appeared, disappeared or changed in one refresh."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    changed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


NO_CHANGES = RegistryChanges()
PollHook = Callable[[RegistryChanges], Awaitable[None]]


def _stat_key(stat: os.stat_result) -> FileKey:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _is_entry_name(name: str) -> bool:
    # Dot names are the kubelet's own (`..data`, `..2024_...`) and our temp files.
    return name.endswith(ENTRY_SUFFIX) and not name.startswith(".")


def fingerprint(directory: Path) -> Fingerprint:
    """Names and stats of the entry files (symlinks followed) and the `..data` target."""
    try:
        scanner = os.scandir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return Fingerprint(present=False)
    files: list[tuple[str, FileKey]] = []
    with scanner:
        for item in scanner:
            if not _is_entry_name(item.name):
                continue
            with contextlib.suppress(OSError):  # dangling link mid-swap: the entry is gone
                files.append((item.name, _stat_key(item.stat())))
    try:
        data_target: str | None = str((directory / DATA_LINK).readlink())
    except OSError:
        data_target = None
    return Fingerprint(present=True, data_target=data_target, files=tuple(sorted(files)))


def _describe(exc: ValidationError) -> str:
    # Locations and error kinds only: messages and inputs may quote the secret values.
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        location = ".".join(str(part) for part in error["loc"]) or "entry"
        parts.append(f"{location}: {error['type']}")
    return "; ".join(parts)


def load_file(path: Path) -> LoadedFile:
    """Read and validate one entry file; problems are returned, never raised."""
    slug = path.name.removesuffix(ENTRY_SUFFIX)
    try:
        with path.open("rb") as handle:
            key = _stat_key(os.fstat(handle.fileno()))
            data = handle.read(MAX_ENTRY_BYTES + 1)
    except OSError as exc:
        return LoadedFile(key=None, problem=f"unreadable ({type(exc).__name__})")
    if not is_valid_tenant_slug(slug):
        return LoadedFile(key=key, problem="file name is not a valid tenant slug")
    if len(data) > MAX_ENTRY_BYTES:
        return LoadedFile(key=key, problem=f"larger than {MAX_ENTRY_BYTES} bytes")
    try:
        entry = TenantEntry.model_validate_json(data)
    except ValidationError as exc:
        return LoadedFile(key=key, problem=_describe(exc))
    if entry.slug != slug:
        return LoadedFile(key=key, problem=f"slug {entry.slug!r} does not match the file name")
    return LoadedFile(key=key, entry=entry)


def scan(directory: Path, previous: Snapshot) -> Snapshot | None:
    """A new snapshot, or None when the fingerprint is unchanged. Pure: safe in a thread."""
    current = fingerprint(directory)
    if current == previous.fingerprint:
        return None
    files: dict[str, LoadedFile] = {}
    fresh: set[str] = set()
    for name, key in current.files:
        cached = previous.files.get(name)
        if cached is not None and cached.key == key:
            files[name] = cached
            continue
        files[name] = load_file(directory / name)
        fresh.add(name)
    entries = {f.entry.slug: f.entry for f in files.values() if f.entry is not None}
    return Snapshot(current, files, entries, frozenset(fresh))


def diff(before: Mapping[str, TenantEntry], after: Mapping[str, TenantEntry]) -> RegistryChanges:
    kept = before.keys() & after.keys()
    return RegistryChanges(
        added=frozenset(after.keys() - before.keys()),
        removed=frozenset(before.keys() - after.keys()),
        changed=frozenset(slug for slug in kept if before[slug] != after[slug]),
    )


class TenantRegistry:
    """`TenantLookup` over a registry directory (in the app: `Tenancy.registry`).

    It is also identity's `TenantDirectory`: the entries say whether a tenant takes new
    users, is suspended or lets people sign up.
    """

    def __init__(self, directory: Path, metrics: TenantMetrics | None = None) -> None:
        self.directory = directory
        self._metrics = metrics
        self._snapshot = Snapshot(fingerprint=None)
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    def read(cls, directory: Path) -> TenantRegistry:
        """A registry read once from `directory`, for a command: no watching, no metrics, and
        only skipped entries are logged (a missing directory is no tenants yet)."""
        registry = cls(directory)
        registry._apply(scan(directory, registry._snapshot), announce=False)
        return registry

    def _observe(self) -> None:
        if self._metrics is not None:
            self._metrics.observe_registry(self._snapshot.entries.values(), len(self.problems()))

    def get(self, slug: str) -> TenantEntry | None:
        return self._snapshot.entries.get(slug)

    def slugs(self) -> list[str]:
        return sorted(self._snapshot.entries)

    def entries(self) -> list[TenantEntry]:
        return [self._snapshot.entries[slug] for slug in self.slugs()]

    def problems(self) -> dict[str, str]:
        """Skipped files and why (no secret values), by file name."""
        return {
            name: loaded.problem
            for name, loaded in sorted(self._snapshot.files.items())
            if loaded.problem is not None
        }

    def refresh(self) -> RegistryChanges:
        """Re-read the directory now (blocking I/O: for the CLI and start-up)."""
        return self._apply(scan(self.directory, self._snapshot))

    async def refresh_async(self) -> RegistryChanges:
        """`refresh` with the file I/O in a thread, so a big registry never stalls requests."""
        return self._apply(await asyncio.to_thread(scan, self.directory, self._snapshot))

    def _apply(self, snapshot: Snapshot | None, *, announce: bool = True) -> RegistryChanges:
        if snapshot is None:
            return NO_CHANGES
        previous = self._snapshot
        self._snapshot = snapshot
        self._log_scan(previous, snapshot, announce=announce)
        changes = diff(previous.entries, snapshot.entries)
        if announce:
            self._announce(previous, snapshot, changes)
        self._observe()
        return changes

    def _announce(self, previous: Snapshot, snapshot: Snapshot, changes: RegistryChanges) -> None:
        if previous.fingerprint is None:
            log.info(
                "tenant_registry_loaded", directory=str(self.directory), tenants=len(changes.added)
            )
        elif changes:
            log.info(
                "tenant_registry_changed",
                added=sorted(changes.added),
                removed=sorted(changes.removed),
                changed=sorted(changes.changed),
                tenants=len(snapshot.entries),
            )

    def _log_scan(self, previous: Snapshot, snapshot: Snapshot, *, announce: bool) -> None:
        assert snapshot.fingerprint is not None
        if not snapshot.fingerprint.present:
            # For a command, no directory yet just means no tenants yet.
            if announce and (previous.fingerprint is None or previous.fingerprint.present):
                log.warning("tenant_registry_missing", directory=str(self.directory))
            return
        for name in sorted(snapshot.fresh):
            problem = snapshot.files[name].problem
            if problem is not None:
                log.warning("tenant_entry_skipped", file=name, reason=problem)

    def start_watching(self, poll_seconds: float, on_poll: PollHook | None = None) -> None:
        """Poll in a background task; `on_poll` runs after every poll, changed or not."""
        if self._watcher is not None:
            return
        self._watcher = asyncio.create_task(
            self._watch(poll_seconds, on_poll), name="tenant-registry-watcher"
        )

    async def _watch(self, poll_seconds: float, on_poll: PollHook | None) -> None:
        while True:
            await asyncio.sleep(poll_seconds)
            try:
                changes = await self.refresh_async()
                if on_poll is not None:
                    await on_poll(changes)
            except Exception as exc:  # one bad poll must not end the watching
                log.error("tenant_registry_poll_failed", error=type(exc).__name__)

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def entry_json(entry: TenantEntry) -> bytes:
    """The file content of an entry, secrets in clear (the file itself is the secret)."""
    document = entry.model_dump(mode="json", exclude_none=True)
    document["database_url"] = entry.database_url.get_secret_value()
    if entry.mongo_url is not None:
        document["mongo_url"] = entry.mongo_url.get_secret_value()
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def entry_file_name(slug: str) -> str:
    """`<slug>.json`: the entry's file name, and its key in the operator's Secret."""
    if not is_valid_tenant_slug(slug):
        raise ValueError("not a valid tenant slug")
    return f"{slug}{ENTRY_SUFFIX}"


def entry_path(directory: Path, slug: str) -> Path:
    return directory / entry_file_name(slug)


def write_entry(directory: Path, entry: TenantEntry) -> Path:
    """Write `<slug>.json` atomically (temp file + rename), mode 0600: a reader sees the old
    entry or the new one, never half of one."""
    target = entry_path(directory, entry.slug)
    directory.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the dot name keeps the watcher from reading it.
    descriptor, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{entry.slug}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(entry_json(entry))
            handle.flush()
            os.fsync(handle.fileno())
        temp.chmod(ENTRY_FILE_MODE)
        temp.replace(target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def remove_entry(directory: Path, slug: str) -> bool:
    """Remove `<slug>.json`; False when there was none."""
    try:
        entry_path(directory, slug).unlink()
    except FileNotFoundError:
        return False
    return True


def backend_of(entry: TenantEntry) -> str:
    """`sqlite` or `postgresql`, from the database URL's scheme (never its credentials)."""
    scheme = entry.database_url.get_secret_value().split(":", 1)[0]
    return scheme.split("+", 1)[0]
