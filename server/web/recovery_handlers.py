"""The password-recovery calls: parse the body into the service's typed input, one service call, ``{}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from server import validation
from server.domain import InvalidEmail
from server.recovery import ForgotPassword, PasswordReset
from server.web.bodies import json_response, read_json_object
from server.web.keys import CONTEXT, RECOVERY


def forgot_password_input(body: dict[str, Any]) -> ForgotPassword:
    """``{"email"}``: a string, not blank, short enough to normalise. Its grammar is not checked: an address
    no user has gets the same answer as one a user has."""
    email = validation.required_string(body, "email")
    validation.check_raw_identifier("email", email)
    if not email.strip():
        raise InvalidEmail("The email must not be empty.")
    return ForgotPassword(email=email)


def password_reset_input(body: dict[str, Any]) -> PasswordReset:
    """``{"code", "password"}``: two strings; the service judges both."""
    return PasswordReset(
        code=validation.required_string(body, "code"), password=validation.required_string(body, "password")
    )


async def forgot_password(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    await request.app[RECOVERY].forgot(forgot_password_input(body), request[CONTEXT].client_ip)
    return json_response({})


async def reset_forgotten_password(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    await request.app[RECOVERY].reset(password_reset_input(body), request[CONTEXT].client_ip)
    return json_response({})
