"""What `make bench` reads from its berth servers besides wrk's figures: memory, cache size.

- **RSS.** VmRSS in /proc/<pid>/status of the process that listens on the server's port: the
  uvicorn process itself, found through its listening socket, not the pid `Popen` returned
  (a wrapper such as `taskset` or a supervisor with workers would be that pid). Sampled
  once a server's first warm-up is over and once after the last round; the goal is on
  end / start.
- **The local cache.** The gauges `berth_local_cache_entries` and `berth_local_cache_bytes`
  from the server's `/metrics` after the last round (the API port: the bench sets no metrics
  port), each beside the setting that bounds it, if the tree has one. A tree without the
  gauges (an older baseline) is "n/a".
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
RSS_BOUND = 1.2  # issue 13: RSS after the run within 1.2x of the start-of-run RSS
_TCP_LISTEN = "0A"
_VM_RSS = re.compile(r"^VmRSS:\s+(\d+)\s+kB$", re.M)


@dataclass(frozen=True)
class CacheGauge:
    """A gauge of the local cache and the setting that bounds it (env name, settings field)."""

    gauge: str
    setting: str
    field: str


# The bound was first meant in entries (BERTH_CACHE__LOCAL_MAX_ENTRIES) and landed in bytes
# (BERTH_CACHE__LOCAL_MAX_BYTES); each gauge is judged against the setting the tree has.
LOCAL_CACHE_GAUGES = (
    CacheGauge("berth_local_cache_entries", "BERTH_CACHE__LOCAL_MAX_ENTRIES", "local_max_entries"),
    CacheGauge("berth_local_cache_bytes", "BERTH_CACHE__LOCAL_MAX_BYTES", "local_max_bytes"),
)


class MeasureError(RuntimeError):
    """A server's process or figure could not be read."""


# --- RSS ------------------------------------------------------------------------------------


def _listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """Socket inodes listening on `port` (any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def _group_members(group: int, proc: Path = PROC) -> Iterator[int]:
    """Pids whose process group is `group` (the server was started in a session of its own)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == group:
            yield int(entry.name)


def server_pid(group: int, port: int, proc: Path = PROC) -> int:
    """The pid in process group `group` holding the socket that listens on `port`."""
    sockets = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    for pid in _group_members(group, proc):
        try:
            descriptors = list((proc / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                if str(descriptor.readlink()) in sockets:
                    return pid
            except OSError:
                continue
    raise MeasureError(f"no process of group {group} listens on port {port}")


def rss_kib(pid: int, proc: Path = PROC) -> int:
    try:
        found = _VM_RSS.search((proc / str(pid) / "status").read_text())
    except OSError as exc:
        raise MeasureError(f"cannot read the RSS of pid {pid}: {exc}") from exc
    if found is None:
        raise MeasureError(f"pid {pid} has no VmRSS (a zombie?)")
    return int(found.group(1))


@dataclass(frozen=True)
class RssSample:
    pid: int
    start_kib: int
    end_kib: int | None = None


def evaluate_memory(
    samples: Mapping[str, RssSample], with_goal: set[str], bound: float = RSS_BOUND
) -> list[dict[str, Any]]:
    """end / start per server; a goal (`bound`) only for the servers in `with_goal` (a
    baseline tree's servers are reported, not judged)."""
    results = []
    for name, sample in samples.items():
        if sample.end_kib is None:
            continue
        ratio = round(sample.end_kib / sample.start_kib, 3)
        goal = bound if name in with_goal else None
        results.append(
            {
                "server": name,
                "pid": sample.pid,
                "start_kib": sample.start_kib,
                "end_kib": sample.end_kib,
                "ratio": ratio,
                "bound": goal,
                "met": goal is None or ratio <= goal,
            }
        )
    return results


# --- the local cache gauge ------------------------------------------------------------------


def gauge_value(exposition: str, name: str) -> float | None:
    """The sum of `name`'s samples in a Prometheus text exposition, None when absent."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})?\s+(\S+)", re.M)
    values = [float(value) for value in pattern.findall(exposition)]
    return sum(values) if values else None


def local_cache_bounds(env: Mapping[str, str]) -> dict[str, int | None]:
    """Per gauge, the server's bound setting, else this tree's default of it (None when the
    tree has no such setting)."""
    from service.core.config import CacheSettings

    defaults = CacheSettings()
    bounds: dict[str, int | None] = {}
    for gauge in LOCAL_CACHE_GAUGES:
        value = env.get(gauge.setting, getattr(defaults, gauge.field, None))
        bounds[gauge.gauge] = None if value is None else int(value)
    return bounds


def local_cache_rows(
    server: str, exposition: str, bounds: Mapping[str, int | None]
) -> list[dict[str, Any]]:
    """Each local-cache gauge of one server beside its bound; `met` None (n/a) when the
    gauge (an older tree) or the bound is absent."""
    rows = []
    for gauge in LOCAL_CACHE_GAUGES:
        value = gauge_value(exposition, gauge.gauge)
        bound = bounds.get(gauge.gauge)
        met = None if value is None or bound is None else value <= bound
        rows.append(
            {"server": server, "gauge": gauge.gauge, "value": value, "bound": bound, "met": met}
        )
    return rows
