"""Idempotency-Key: a retried POST never makes a second submission."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from service.container import container_of
from tests.service.submissions.conftest import SUBMISSIONS, SubmissionsApi
from tests.service.submissions.factories import declaration, xml_declaration


def _keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def _count(api: SubmissionsApi, headers: dict[str, str]) -> int:
    listed = await api.client.get(SUBMISSIONS, params={"limit": 100}, headers=headers)
    return len(listed.json()["items"])


async def test_the_same_key_and_body_return_the_first_submission(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "order-1")

    first = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    again = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert await _count(api, headers) == 1


async def test_the_same_declaration_as_xml_is_the_same_body(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "order-xml")

    first = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    again = await api.client.post(
        SUBMISSIONS, content=xml_declaration(declaration()),
        headers={**headers, "Content-Type": "application/xml"},
    )  # fmt: skip

    assert again.json()["id"] == first.json()["id"]


async def test_the_same_key_with_another_body_is_a_409(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "order-2")
    await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)

    other = await api.client.post(SUBMISSIONS, json=declaration(reference="B"), headers=headers)

    assert other.status_code == 409
    assert "different body" in other.json()["message"]
    assert await _count(api, headers) == 1


async def test_keys_belong_to_their_user(api: SubmissionsApi) -> None:
    alice = _keyed(await api.user(), "shared")
    bob = _keyed(await api.user(), "shared")

    first = await api.client.post(SUBMISSIONS, json=declaration(), headers=alice)
    second = await api.client.post(SUBMISSIONS, json=declaration(reference="Z"), headers=bob)

    assert second.status_code == 202
    assert second.json()["id"] != first.json()["id"]


async def test_concurrent_requests_with_one_key_make_one_submission(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "burst")

    responses = await asyncio.gather(
        *(api.client.post(SUBMISSIONS, json=declaration(), headers=headers) for _ in range(12))
    )

    assert {response.status_code for response in responses} == {202}
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum("Idempotent-Replayed" not in r.headers for r in responses) == 1
    assert await _count(api, headers) == 1


async def test_a_key_past_its_24_hours_makes_a_new_submission(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "old")
    first = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    service = container_of(api.app).submissions.service
    later = service._clock() + timedelta(hours=24, seconds=1)
    service._clock = lambda: later

    again = await api.client.post(SUBMISSIONS, json=declaration(reference="new"), headers=headers)

    assert again.status_code == 202
    assert again.json()["id"] != first.json()["id"]


async def test_deleting_a_submission_frees_its_key(api: SubmissionsApi) -> None:
    headers = _keyed(await api.user(), "again")
    first = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    await api.client.delete(first.headers["Location"], headers=headers)

    again = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)

    assert again.status_code == 202
    assert again.json()["id"] != first.json()["id"]


async def test_an_unusable_key_is_a_422(api: SubmissionsApi) -> None:
    headers = await api.user()

    too_long = await api.client.post(
        SUBMISSIONS, json=declaration(), headers=_keyed(headers, "k" * 129)
    )
    spaced = await api.client.post(SUBMISSIONS, json=declaration(), headers=_keyed(headers, "a b"))

    assert (too_long.status_code, spaced.status_code) == (422, 422)
