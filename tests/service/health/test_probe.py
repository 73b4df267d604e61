"""ReadinessProbe: concurrent checks with timeouts, one round per cache window."""

from __future__ import annotations

import asyncio

from service.health.service import Check, ReadinessProbe


class CountingCheck:
    """A real async check that counts its runs (no mock: it just sleeps and counts)."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.delay = delay
        self.error = error
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error


async def test_a_burst_of_probes_runs_the_checks_once() -> None:
    check = CountingCheck(delay=0.05)
    probe = ReadinessProbe([Check("db", True, check)], timeout_seconds=1, cache_seconds=2)

    reports = await asyncio.gather(*(probe.report() for _ in range(50)))

    assert check.runs == 1
    assert len({r.checked_at for r in reports}) == 1


async def test_report_is_refreshed_after_the_cache_window() -> None:
    check = CountingCheck()
    probe = ReadinessProbe([Check("db", True, check)], timeout_seconds=1, cache_seconds=0.05)

    await probe.report()
    await asyncio.sleep(0.06)
    await probe.report()

    assert check.runs == 2


async def test_checks_run_concurrently_each_bounded_by_the_timeout() -> None:
    slow = [CountingCheck(delay=5) for _ in range(3)]
    probe = ReadinessProbe(
        [Check(f"c{i}", True, c) for i, c in enumerate(slow)], timeout_seconds=0.2, cache_seconds=0
    )

    started = asyncio.get_running_loop().time()
    report = await probe.report()
    elapsed = asyncio.get_running_loop().time() - started

    assert elapsed < 0.6  # concurrent: ~one timeout, not three
    assert report.status == "down"
    assert all(c.error == "timed out after 0.2s" for c in report.checks)


async def test_failure_reports_the_error_type_not_its_message() -> None:
    check = CountingCheck(error=ConnectionRefusedError("password=hunter2 host=db.internal"))
    probe = ReadinessProbe([Check("redis", False, check)], timeout_seconds=1, cache_seconds=0)

    report = await probe.report()

    assert report.status == "degraded"
    assert report.checks[0].error == "ConnectionRefusedError"
