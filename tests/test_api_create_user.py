"""POST /user through HTTP: creating users, their defaults, the field rules and API_USER_CREATE_SCOPE."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from server.domain import UsernameConfusable
from server.security import new_user_id
from server.web.keys import SERVICE, USERS
from tests.conftest import JWT_SECRET, PASSWORD, ClientFactory, admin_token, bearer, create_admin, sign_up


async def test_create_user_returns_only_a_token_for_the_new_user(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/user", json={"username": "abc@example.com", "email": "abc@example.com", "password": "abc321"}
    )
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"token"}
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"], options={"require": ["iat", "exp"]})
    assert claims["scope"] == ["user"]
    assert len(claims["id"]) == 24
    me = await (await client.get("/user", headers=bearer(body["token"]))).json()
    assert me == {
        "id": claims["id"],
        "username": "abc@example.com",
        "isActive": False,
        "email": "abc@example.com",
        "scope": ["user"],
        "plan": "free",
    }


async def test_server_owned_fields_are_never_taken_from_the_body(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client, id="0" * 24, scope=["admin"], plan="enterprise", isActive=True, unknownField={"x": 1})
    me = await (await client.get("/user", headers=bearer(token))).json()
    assert me["id"] != "0" * 24
    assert me["scope"] == ["user"]
    assert me["plan"] == "free"
    assert me["isActive"] is False
    assert "unknownField" not in me


async def test_metadata_is_kept_and_returned(client: TestClient[Any, Any]) -> None:
    metadata = {"company": "ACME", "tags": ["a", "b"], "nested": {"n": 1.5, "ok": True, "none": None}}
    token = await sign_up(client, metadata=metadata)
    me = await (await client.get("/user", headers=bearer(token))).json()
    assert me["metadata"] == metadata


async def test_metadata_with_numbers_beyond_64_bits_is_returned_exactly(client: TestClient[Any, Any]) -> None:
    metadata = {"big": 2**70, "negative": -(2**65), "text": "žluťoučký"}
    token = await sign_up(client, metadata=metadata)
    response = await client.get("/user", headers=bearer(token))
    assert response.status == 200
    assert json.loads(await response.text())["metadata"] == metadata


async def test_metadata_must_be_an_object(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/user", json={"username": "a", "email": "a@example.com", "password": PASSWORD, "metadata": [1]}
    )
    assert response.status == 400
    assert (await response.json())["code"] == "invalid_field"


async def test_default_plan_is_configurable(make_client: ClientFactory) -> None:
    client = await make_client(default_plan="trial")
    token = await sign_up(client)
    assert (await (await client.get("/user", headers=bearer(token))).json())["plan"] == "trial"


@pytest.mark.parametrize(
    ("taken", "attempt", "code"),
    [
        (("abc", "abc@example.com"), ("ABC", "other@example.com"), "username_taken"),
        (("abc", "abc@example.com"), (" abc ", "other@example.com"), "username_taken"),
        (("abc", "abc@example.com"), ("other", "ABC@Example.COM"), "email_taken"),
        (("Stra\u00dfe", "s1@example.com"), ("STRASSE", "s2@example.com"), "username_taken"),
    ],
)
async def test_taken_username_or_email_gives_409(
    client: TestClient[Any, Any], taken: tuple[str, str], attempt: tuple[str, str], code: str
) -> None:
    await sign_up(client, username=taken[0], email=taken[1])
    response = await client.post("/user", json={"username": attempt[0], "email": attempt[1], "password": PASSWORD})
    assert response.status == 409
    error = await response.json()
    assert error["code"] == code
    assert error["statusCode"] == 409


async def test_email_is_stored_as_given(client: TestClient[Any, Any]) -> None:
    token = await sign_up(client, username="mixed", email="Mixed.Case@Example.com")
    me = await (await client.get("/user", headers=bearer(token))).json()
    assert me["email"] == "Mixed.Case@Example.com"
    response = await client.post("/user/auth", json={"email": "mixed.case@example.com", "password": PASSWORD})
    assert response.status == 200


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"username": None}, "missing_field", "username"),
        ({"email": None}, "missing_field", "email"),
        ({"password": None}, "missing_field", "password"),
        ({"username": 12}, "invalid_field", "username"),
        ({"email": {"a": 1}}, "invalid_field", "email"),
        ({"password": True}, "invalid_field", "password"),
        ({"username": ""}, "invalid_username", "empty"),
        ({"username": "x" * 129}, "invalid_username", "128"),
        ({"username": "bad\nname"}, "invalid_username", "control"),
        ({"username": "zero\u200bwidth"}, "invalid_username", "invisible"),
        ({"username": "nul\x00"}, "invalid_username", "control"),
        ({"email": "not-an-email"}, "invalid_email", "not valid"),
        ({"email": "a" * 250 + "@example.com"}, "invalid_email", "254"),
        ({"password": "abc32"}, "password_too_short", "at least 6"),
        ({"password": "x" * 73}, "password_too_long", "72 bytes"),
        ({"password": "\u00e9" * 37}, "password_too_long", "72 bytes"),
    ],
)
async def test_field_rules_give_400_naming_the_rule(
    client: TestClient[Any, Any], changes: dict[str, Any], code: str, words: str
) -> None:
    body: dict[str, Any] = {"username": "abc", "email": "abc@example.com", "password": PASSWORD}
    for key, value in changes.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    response = await client.post("/user", json=body)
    assert response.status == 400
    error = await response.json()
    assert error["code"] == code
    assert words in error["error"]


async def test_username_limits_are_inclusive(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="x" * 128, email="long@example.com")
    await sign_up(client, username="y", email="short@example.com")
    await sign_up(client, username="Zo\u00eb Smith-\u5c71\u7530", email="zoe@example.com", password="\u00e9" * 36)


async def test_password_min_length_is_configurable(make_client: ClientFactory) -> None:
    client = await make_client(password_min_length=10)
    response = await client.post("/user", json={"username": "a", "email": "a@example.com", "password": "123456789"})
    assert response.status == 400
    assert "at least 10" in (await response.json())["error"]
    await sign_up(client, username="b", email="b@example.com", password="1234567890")


async def test_concurrent_signups_race_for_one_username(make_client: ClientFactory) -> None:
    """20 requests racing for one username next to 20 distinct ones: exactly 21 succeed, each token is its own."""
    client = await make_client(hash_queue_limit=100)  # admit all 40 at once rather than refuse some with 503

    async def attempt(username: str, email: str) -> tuple[int, dict[str, Any], str]:
        response = await client.post("/user", json={"username": username, "email": email, "password": PASSWORD})
        return response.status, await response.json(), username

    racing = [attempt("contested", f"racer{i}@example.com") for i in range(20)]
    distinct = [attempt(f"user{i}", f"user{i}@example.com") for i in range(20)]
    results = await asyncio.gather(*racing, *distinct)
    winners = [(body, username) for status, body, username in results if status == 200]
    assert len(winners) == 21
    assert sorted(status for status, _, _ in results).count(409) == 19
    for body, username in winners:
        me = await (await client.get("/user", headers=bearer(body["token"]))).json()
        assert me["username"] == username


class TestCreateScope:
    async def test_open_by_default(self, client: TestClient[Any, Any]) -> None:
        await sign_up(client)

    async def test_no_token_gives_401_when_a_scope_is_required(self, make_client: ClientFactory) -> None:
        client = await make_client(api_user_create_scope=("admin",))
        response = await client.post("/user", json={"username": "a", "email": "a@example.com", "password": PASSWORD})
        assert response.status == 401
        assert (await response.json())["code"] == "authentication_required"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    async def test_invalid_token_gives_401(self, make_client: ClientFactory) -> None:
        client = await make_client(api_user_create_scope=("admin",))
        response = await client.post(
            "/user",
            json={"username": "a", "email": "a@example.com", "password": PASSWORD},
            headers=bearer(admin_token(new_user_id(), ["admin"])),  # signed, but names no stored user
        )
        assert response.status == 401
        assert (await response.json())["code"] == "invalid_token"

    async def test_token_without_the_scope_gives_403(self, make_client: ClientFactory) -> None:
        client = await make_client(api_user_create_scope=("admin", "ops"))
        token = await create_admin(client, scope=("user",))
        response = await client.post(
            "/user", json={"username": "a", "email": "a@example.com", "password": PASSWORD}, headers=bearer(token)
        )
        assert response.status == 403
        assert (await response.json())["code"] == "insufficient_scope"

    @pytest.mark.parametrize("scope", [("admin",), ("ops",)])
    async def test_any_listed_scope_is_enough(self, make_client: ClientFactory, scope: tuple[str, ...]) -> None:
        client = await make_client(api_user_create_scope=("admin", "ops"))
        token = await create_admin(client, scope=scope)
        response = await client.post(
            "/user", json={"username": "a", "email": "a@example.com", "password": PASSWORD}, headers=bearer(token)
        )
        assert response.status == 200
        created = jwt.decode((await response.json())["token"], JWT_SECRET, algorithms=["HS256"])
        assert created["scope"] == ["user"]

    async def test_scopes_come_from_the_store_not_the_token(self, make_client: ClientFactory) -> None:
        client = await make_client(api_user_create_scope=("admin",))
        user_token = await create_admin(client, scope=("user",))
        claims = jwt.decode(user_token, JWT_SECRET, algorithms=["HS256"])
        forged_scope = admin_token(claims["id"], ["admin"])  # validly signed, but the stored user is not an admin
        response = await client.post(
            "/user",
            json={"username": "a", "email": "a@example.com", "password": PASSWORD},
            headers=bearer(forged_scope),
        )
        assert response.status == 403


# Look-alike identities: email domains keyed by their IDNA form, usernames by their confusable skeleton.

IDN_U_LABEL = "idn@b\u00fccher.example"
IDN_A_LABEL = "idn@xn--bcher-kva.example"
CYRILLIC_ADMIN = "\u0430dmin"  # Cyrillic small a, then "dmin"


@pytest.mark.parametrize(("first", "second"), [(IDN_U_LABEL, IDN_A_LABEL), (IDN_A_LABEL, "IDN@B\u00dcCHER.Example")])
async def test_one_idn_mailbox_is_one_account(client: TestClient[Any, Any], first: str, second: str) -> None:
    await sign_up(client, username="first", email=first)
    response = await client.post("/user", json={"username": "second", "email": second, "password": PASSWORD})
    assert response.status == 409
    assert (await response.json())["code"] == "email_taken"


async def test_one_idn_mailbox_is_one_signup_bucket(make_client: ClientFactory) -> None:
    client = await make_client(user_signup_rate_limit_email=1)
    await sign_up(client, username="first", email=IDN_U_LABEL)
    response = await client.post("/user", json={"username": "second", "email": IDN_A_LABEL, "password": PASSWORD})
    assert response.status == 429
    assert (await response.json())["code"] == "signup_email_rate_limited"


async def test_sharp_s_and_ss_domains_are_two_accounts(client: TestClient[Any, Any]) -> None:
    """IDNA 2008 keeps ß: straße.example (xn--strae-oqa) and strasse.example are different domains."""
    await sign_up(client, username="sharp", email="ss@stra\u00dfe.example")
    await sign_up(client, username="double", email="ss@strasse.example")


@pytest.mark.parametrize(
    "spelling", [IDN_U_LABEL, IDN_A_LABEL, " IDN@XN--BCHER-KVA.EXAMPLE ", "idn@B\u00fcCHER.example"]
)
async def test_sign_in_by_either_spelling_of_an_idn_email(client: TestClient[Any, Any], spelling: str) -> None:
    await sign_up(client, username="idn", email=IDN_U_LABEL)
    response = await client.post("/user/auth", json={"email": spelling, "password": PASSWORD})
    assert response.status == 200, await response.text()
    assert (await response.json())["user"]["email"] == IDN_U_LABEL


async def test_sign_in_with_a_domain_idna_refuses_is_an_ordinary_failure(client: TestClient[Any, Any]) -> None:
    response = await client.post("/user/auth", json={"email": "a@bad_domain..example", "password": PASSWORD})
    assert response.status == 403
    assert (await response.json())["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    ("taken", "attempt"),
    [
        ("admin", CYRILLIC_ADMIN),
        (CYRILLIC_ADMIN, "admin"),
        ("admin", "\u0410DMIN"),  # Cyrillic capital A: compared after case folding
        ("paypal", "p\u0430yp\u0430l"),
        ("m", "rn"),  # UTS #39 maps m to rn: ordinary names that look alike are refused too
        ("alice1", "alicel"),
    ],
)
async def test_confusable_username_gives_409(client: TestClient[Any, Any], taken: str, attempt: str) -> None:
    await sign_up(client, username=taken, email="taken@example.com")
    response = await client.post(
        "/user", json={"username": attempt, "email": "other@example.com", "password": PASSWORD}
    )
    assert response.status == 409
    error = await response.json()
    assert error["code"] == "username_confusable"
    assert error["statusCode"] == 409
    assert "similar" in error["error"]


async def test_the_same_username_in_another_case_is_taken_not_confusable(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="admin", email="taken@example.com")
    response = await client.post(
        "/user", json={"username": "ADMIN", "email": "other@example.com", "password": PASSWORD}
    )
    assert response.status == 409
    assert (await response.json())["code"] == "username_taken"


async def test_names_that_do_not_look_alike_are_accepted(client: TestClient[Any, Any]) -> None:
    for number, name in enumerate(["admin", "admins", "adm1n", "\u0430\u0434\u043c\u0438\u043d", "zo\u00eb", "zoe"]):
        await sign_up(client, username=name, email=f"user{number}@example.com")


async def test_the_command_line_path_refuses_a_confusable_username(client: TestClient[Any, Any]) -> None:
    """create-user goes through register_user, as the service's create_user does."""
    await sign_up(client, username="admin", email="taken@example.com")
    body = {"username": CYRILLIC_ADMIN, "email": "other@example.com", "password": PASSWORD}
    with pytest.raises(UsernameConfusable):
        await client.app[SERVICE].create_user(body, ("admin",), via="cli")


async def test_the_command_line_finds_a_user_by_either_spelling_of_an_idn_email(client: TestClient[Any, Any]) -> None:
    await sign_up(client, username="idn", email=IDN_U_LABEL)
    users = client.app[USERS]
    assert (await users.find(IDN_A_LABEL)).username == "idn"
    assert (await users.find("IDN@B\u00dcCHER.EXAMPLE")).username == "idn"
