"""Submissions over HTTP: accepted as JSON or XML, refused clearly, read back, deleted."""

from __future__ import annotations

import pytest
from pymongo import MongoClient

from tests.mongo_server import MongoServer
from tests.service.submissions.conftest import SUBMISSIONS, SubmissionsApi, SubmissionsApiFactory
from tests.service.submissions.factories import declaration, line_item, xml_declaration
from tests.support import json_lines, metric_value

XML = {"Content-Type": "application/xml"}
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<declaration><reference>&lol3;</reference></declaration>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<declaration><reference>&xxe;</reference></declaration>"""


async def test_a_json_declaration_is_accepted_pending_with_its_location(
    api: SubmissionsApi,
) -> None:
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, json=declaration(items=2), headers=headers)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "PENDING"
    assert body["item_count"] == 2
    assert response.headers["Location"] == f"{SUBMISSIONS}/{body['id']}"
    fetched = await api.client.get(response.headers["Location"], headers=headers)
    assert fetched.status_code == 200
    item = fetched.json()["items"][0]
    assert (item["description"], item["line_value"]) == ("Item 0", "21.0000")


async def test_an_xml_declaration_is_the_same_declaration(api: SubmissionsApi) -> None:
    headers = await api.user()

    response = await api.client.post(
        SUBMISSIONS, content=xml_declaration(declaration(items=3)), headers={**headers, **XML}
    )

    assert response.status_code == 202, response.text
    assert response.json()["content_type"] == "xml"
    assert response.json()["item_count"] == 3
    assert metric_value(api.app, "berth_submissions_received_total", content_type="xml") == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (BILLION_LAUGHS, "DTD"),
        (XXE, "DTD"),
        (b"<declaration><reference>x</declaration>", "malformed XML"),
        (b"<other/>", "<declaration>"),
    ],
    ids=["billion-laughs", "xxe", "malformed", "wrong-root"],
)
async def test_hostile_or_malformed_xml_is_a_400_in_the_envelope(
    api: SubmissionsApi, body: bytes, fragment: str
) -> None:
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, content=body, headers={**headers, **XML})

    assert response.status_code == 400
    assert response.json()["success"] is False
    assert fragment in response.json()["message"]
    assert "passwd" not in response.text


async def test_malformed_json_is_a_400(api: SubmissionsApi) -> None:
    headers = await api.user()

    response = await api.client.post(
        SUBMISSIONS,
        content=b'{"declarant": ',
        headers={**headers, "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert "malformed JSON" in response.json()["message"]


async def test_another_content_type_is_a_415(api: SubmissionsApi) -> None:
    headers = await api.user()

    response = await api.client.post(
        SUBMISSIONS, content=b"reference=x", headers={**headers, "Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert "application/xml" in response.json()["message"]


async def test_a_body_over_the_limit_is_a_413_before_parsing(
    submissions_api_for: SubmissionsApiFactory,
) -> None:
    api = await submissions_api_for(http={"max_body_bytes": 2048})
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, json=declaration(items=50), headers=headers)

    assert response.status_code == 413
    assert await _stored(api, "acme") == 0


@pytest.mark.parametrize(
    ("change", "location"),
    [
        ({"items": []}, ["body", "items"]),
        ({"items": [line_item()] * 1001}, ["body", "items"]),
        ({"items": [line_item(currency="XXY")]}, ["body", "items", 0, "currency"]),
        ({"items": [line_item(origin_country="ZZ")]}, ["body", "items", 0, "origin_country"]),
        ({"items": [line_item(quantity="0")]}, ["body", "items", 0, "quantity"]),
        ({"items": [line_item(unit_value="1e20")]}, ["body", "items", 0, "unit_value"]),
        ({"items": [line_item(description="")]}, ["body", "items", 0, "description"]),
        ({"declarant": {"name": "A", "eori": "not an eori", "country": "DE"}},
         ["body", "declarant", "eori"]),
        ({"surprise": True}, ["body", "surprise"]),
    ],
    ids=["no-items", "too-many-items", "currency", "country", "quantity", "unit-value",
         "description", "eori", "unknown-field"],
)  # fmt: skip
async def test_an_invalid_declaration_is_a_422_naming_the_field_without_its_value(
    api: SubmissionsApi, change: dict[str, object], location: list[object]
) -> None:
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, json={**declaration(), **change}, headers=headers)

    assert response.status_code == 422, response.text
    assert location in [error["loc"] for error in response.json()["data"]["errors"]]
    assert "not an eori" not in response.text
    assert await _stored(api, "acme") == 0


async def test_an_xml_declaration_with_an_unknown_element_is_a_422(api: SubmissionsApi) -> None:
    headers = await api.user()
    body = declaration()
    body["declarant"]["nickname"] = "ac"

    response = await api.client.post(
        SUBMISSIONS, content=xml_declaration(body), headers={**headers, **XML}
    )

    assert response.status_code == 422
    errors = response.json()["data"]["errors"]
    assert ["body", "declarant", "nickname"] in [error["loc"] for error in errors]


async def test_a_member_sees_only_their_own_and_an_admin_sees_all(api: SubmissionsApi) -> None:
    alice, bob, admin = await api.user(), await api.user(), await api.user(role="admin")
    mine = await api.submit(alice)
    theirs = await api.submit(bob)

    as_alice = await api.client.get(SUBMISSIONS, headers=alice)
    as_admin = await api.client.get(SUBMISSIONS, headers=admin)

    assert [item["id"] for item in as_alice.json()["items"]] == [mine["id"]]
    assert {item["id"] for item in as_admin.json()["items"]} == {mine["id"], theirs["id"]}
    assert (await api.client.get(f"{SUBMISSIONS}/{theirs['id']}", headers=alice)).status_code == 404
    assert (await api.client.get(f"{SUBMISSIONS}/{theirs['id']}", headers=admin)).status_code == 200
    deleted = await api.client.delete(f"{SUBMISSIONS}/{theirs['id']}", headers=alice)
    assert deleted.status_code == 404


async def test_another_tenants_submission_is_a_404(api: SubmissionsApi) -> None:
    acme_owner = await api.user(role="owner", tenant="acme")
    beta_owner = await api.user(role="owner", tenant="beta")
    created = await api.submit(acme_owner)

    response = await api.client.get(f"{SUBMISSIONS}/{created['id']}", headers=beta_owner)

    assert response.status_code == 404
    assert response.json()["message"] == "Submission not found"


async def test_list_pages_carry_no_line_items_and_continue_by_cursor(api: SubmissionsApi) -> None:
    headers = await api.user()
    created = [(await api.submit(headers))["id"] for _ in range(5)]

    first = (await api.client.get(SUBMISSIONS, params={"limit": 2}, headers=headers)).json()
    seen = [item["id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await api.client.get(
            SUBMISSIONS, params={"limit": 2, "cursor": cursor}, headers=headers
        )
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]

    assert seen == created
    assert "items" not in first["items"][0]
    assert first["items"][0]["item_count"] == 1


async def test_a_cursor_from_other_filters_is_refused(api: SubmissionsApi) -> None:
    headers = await api.user()
    for _ in range(3):
        await api.submit(headers)
    first = (await api.client.get(SUBMISSIONS, params={"limit": 1}, headers=headers)).json()

    response = await api.client.get(
        SUBMISSIONS, params={"cursor": first["next_cursor"], "status": "FAILED"}, headers=headers
    )

    assert response.status_code == 400


async def test_list_filters_by_status_declarant_and_created_range(api: SubmissionsApi) -> None:
    headers = await api.user()
    other = declaration(declarant={"name": "Beta BV", "eori": "NL987654321", "country": "NL"})
    acme = await api.submit(headers)
    beta = await api.submit(headers, other)

    by_eori = await api.client.get(
        SUBMISSIONS, params={"declarant": "NL987654321"}, headers=headers
    )
    by_name = await api.client.get(SUBMISSIONS, params={"declarant": "Acme GmbH"}, headers=headers)
    failed = await api.client.get(SUBMISSIONS, params={"status": "FAILED"}, headers=headers)
    after_beta = await api.client.get(
        SUBMISSIONS, params={"created_from": "2100-01-01T00:00:00Z"}, headers=headers
    )
    before_now = await api.client.get(
        SUBMISSIONS, params={"created_to": "2100-01-01T00:00:00Z"}, headers=headers
    )

    assert [item["id"] for item in by_eori.json()["items"]] == [beta["id"]]
    assert [item["id"] for item in by_name.json()["items"]] == [acme["id"]]
    assert failed.json()["items"] == []
    assert after_beta.json()["items"] == []
    assert len(before_now.json()["items"]) == 2


async def test_only_pending_or_failed_submissions_can_be_deleted(
    api: SubmissionsApi, mongo_server: MongoServer
) -> None:
    headers = await api.user()
    pending = await api.submit(headers)
    processed = await api.submit(headers)
    _set_status(mongo_server, api.database_of("acme"), processed["id"], "PROCESSED")

    gone = await api.client.delete(f"{SUBMISSIONS}/{pending['id']}", headers=headers)
    kept = await api.client.delete(f"{SUBMISSIONS}/{processed['id']}", headers=headers)

    assert gone.status_code == 204
    assert (
        await api.client.get(f"{SUBMISSIONS}/{pending['id']}", headers=headers)
    ).status_code == 404
    assert kept.status_code == 409
    assert "PENDING or FAILED" in kept.json()["message"]


async def test_without_mongodb_the_endpoints_answer_503_naming_the_setting(
    submissions_api_for: SubmissionsApiFactory,
) -> None:
    api = await submissions_api_for(mongo={"url": None})
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    listed = await api.client.get(SUBMISSIONS, headers=headers)

    assert response.status_code == listed.status_code == 503
    assert "BERTH_MONGO__URL" in response.json()["message"]


async def test_readiness_reports_mongodb_not_configured_without_a_url(
    submissions_api_for: SubmissionsApiFactory,
) -> None:
    api = await submissions_api_for(mongo={"url": None})

    report = (await api.client.get("/api/v1/health/ready")).json()

    mongo = next(check for check in report["checks"] if check["name"] == "mongo")
    assert mongo["status"] == "not_configured"
    assert report["status"] == "ok"


async def test_readiness_checks_mongodb_when_configured(api: SubmissionsApi) -> None:
    report = (await api.client.get("/api/v1/health/ready")).json()

    mongo = next(check for check in report["checks"] if check["name"] == "mongo")
    assert (mongo["status"], mongo["required"]) == ("ok", False)


async def test_an_unreachable_mongodb_is_a_503_and_degrades_readiness(
    submissions_api_for: SubmissionsApiFactory,
) -> None:
    dead = "mongodb://127.0.0.1:9/?directConnection=true"
    api = await submissions_api_for(mongo={"url": dead, "timeout_seconds": 0.3},
                                    observability={"readiness_timeout_seconds": 2})  # fmt: skip
    headers = await api.user()

    response = await api.client.post(SUBMISSIONS, json=declaration(), headers=headers)
    report = (await api.client.get("/api/v1/health/ready")).json()

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert report["status"] == "degraded"


def _set_status(server: MongoServer, database: str, submission_id: str, status: str) -> None:
    import uuid

    with MongoClient(server.url, uuidRepresentation="standard") as client:
        client[database].submissions.update_one(
            {"_id": uuid.UUID(submission_id)}, {"$set": {"status": status}}
        )


async def _stored(api: SubmissionsApi, tenant: str) -> int:
    from service.container import container_of

    documents = container_of(api.app).tenancy.documents
    entry = container_of(api.app).tenancy.registry.get(tenant)
    assert entry is not None
    async with documents.lease(entry) as database:
        return await database.database["submissions"].count_documents({})


async def test_log_lines_about_a_submission_carry_its_tenant_and_id(
    api: SubmissionsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    headers = await api.user()
    created = await api.submit(headers)
    capsys.readouterr()

    await api.client.get(f"{SUBMISSIONS}/{created['id']}", headers=headers)

    access = [line for line in json_lines(capsys.readouterr().out) if line["event"] == "request"]
    assert access[-1]["tenant"] == "acme"
    assert access[-1]["submission_id"] == created["id"]
