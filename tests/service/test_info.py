from __future__ import annotations

import httpx

from service import package_version


async def test_info_reports_name_version_commit_and_environment(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/info")

    assert response.status_code == 200
    assert response.json() == {
        "name": "berth",
        "version": package_version(),
        "commit": "unknown",
        "environment": "test",
    }
