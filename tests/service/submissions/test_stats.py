"""`GET /submissions/stats`: one aggregation, equal to a recomputation in Python, on an index."""

from __future__ import annotations

import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from service.container import container_of
from service.submissions.models import SUBMISSION_MODELS, SubmissionFields
from service.submissions.repository import SubmissionRepository
from service.submissions.schemas import Declarant, SubmissionStatus
from service.submissions.service import mongo_time
from tests.service.submissions.conftest import SUBMISSIONS, SubmissionsApi
from tests.service.submissions.factories import stored_line, stored_submission

GENERATED = 5_000
CURRENCIES = ("EUR", "USD", "JPY", "CHF")
DECLARANT = Declarant(name="Acme GmbH", eori="DE123456789", country="DE")


def _generated(owners: list[uuid.UUID], now: datetime, seed: int = 7) -> list[SubmissionFields]:
    """Submissions spread over 40 days (some outside a 30-day window), every status."""
    rng = random.Random(seed)
    made = []
    for _ in range(GENERATED):
        created = mongo_time(now - timedelta(seconds=rng.randrange(40 * 86_400)))
        lines = [
            stored_line(str(rng.randint(1, 50)), str(Decimal(rng.randint(1, 100_000)) / 100),
                        rng.choice(CURRENCIES))
            for _ in range(rng.randint(1, 4))
        ]  # fmt: skip
        made.append(stored_submission(
            lines, created_by=rng.choice(owners), created_at=created, updated_at=created,
            not_before=created, status=rng.choice(list(SubmissionStatus)),
        ))  # fmt: skip
    return made


async def _seed(api: SubmissionsApi, submissions: list[SubmissionFields]) -> SubmissionRepository:
    tenancy = container_of(api.app).tenancy
    entry = tenancy.registry.get("acme")
    assert entry is not None
    async with tenancy.documents.lease(entry) as database:
        models = await database.models(SUBMISSION_MODELS)
        documents = [models.submission.model_validate(s.model_dump()) for s in submissions]
        for start in range(0, len(documents), 500):  # each call within the client's timeout
            await models.submission.insert_many(documents[start : start + 500])
        return SubmissionRepository(models)


def _expected(submissions: list[SubmissionFields], since: datetime) -> dict[str, object]:
    window = [s for s in submissions if s.created_at >= since]
    by_status = Counter(s.status.value for s in window)
    per_day = Counter(s.created_at.strftime("%Y-%m-%d") for s in window)
    values: defaultdict[str, Decimal] = defaultdict(Decimal)
    counts: Counter[str] = Counter()
    for submission in window:
        for item in submission.items:
            values[item.currency] += item.line_value
            counts[item.currency] += 1
    return {
        "by_status": [{"status": k, "count": by_status[k]} for k in sorted(by_status)],
        "per_day": [{"day": k, "count": per_day[k]} for k in sorted(per_day)],
        "totals": [{"currency": k, "value": str(values[k]), "items": counts[k]}
                   for k in sorted(values)],
    }  # fmt: skip


async def test_stats_over_5000_submissions_equal_a_recomputation(api: SubmissionsApi) -> None:
    admin = await api.user(role="admin")
    member_headers = await api.user()
    member = uuid.UUID(
        (await api.client.get("/api/v1/auth/me", headers=member_headers)).json()["id"]
    )
    now = datetime.now(UTC)
    submissions = _generated([member, uuid.uuid4(), uuid.uuid4()], now)
    await _seed(api, submissions)

    everyone = (await api.client.get(f"{SUBMISSIONS}/stats", headers=admin)).json()
    own = (await api.client.get(f"{SUBMISSIONS}/stats", headers=member_headers)).json()

    since = datetime.fromisoformat(everyone["since"])
    assert since == (now - timedelta(days=29)).replace(hour=0, minute=0, second=0, microsecond=0)
    expected = _expected(submissions, since)
    assert {key: everyone[key] for key in expected} == expected
    own_expected = _expected([s for s in submissions if s.created_by == member], since)
    assert {key: own[key] for key in own_expected} == own_expected
    assert sum(row["count"] for row in everyone["per_day"]) < GENERATED  # the window bites


async def test_the_stats_window_is_bounded_by_days(api: SubmissionsApi) -> None:
    admin = await api.user(role="admin")

    one_day = await api.client.get(f"{SUBMISSIONS}/stats", params={"days": 1}, headers=admin)
    too_long = await api.client.get(f"{SUBMISSIONS}/stats", params={"days": 367}, headers=admin)

    assert one_day.json()["window_days"] == 1
    assert too_long.status_code == 422


async def test_the_stats_match_runs_on_an_index(api: SubmissionsApi) -> None:
    repository = await _seed(api, _generated([uuid.uuid4()], datetime.now(UTC))[:50])
    since = datetime.now(UTC) - timedelta(days=30)

    for owner in (None, uuid.uuid4()):
        plan = str(await repository.explain_stats(owner, since))

        assert "IXSCAN" in plan
        assert "COLLSCAN" not in plan
