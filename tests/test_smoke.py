from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import bearer, sign_up


async def test_signup_then_get_user(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client)
    response = await client.get("/user", headers=bearer(token))
    assert response.status == 200
    assert (await response.json())["username"] == "abc@example.com"
