"""The OpenAPI 3.1 description of the API, served at GET /openapi.json.

Tests validate real responses against these schemas, and schemathesis checks the running server against the
whole document (statuses, headers, content types, and which requests it accepts or rejects), so the document
cannot drift from the server. Where a rule cannot be said in JSON Schema (bytes of UTF-8 after NFKC, the
email grammar, Unicode categories), the schema is the widest true statement and the description says the rest.
"""

from __future__ import annotations

from typing import Any

from server import __version__
from server.security import BCRYPT_MAX_BYTES
from server.validation import EMAIL_MAX_CHARS, USERNAME_MAX_CHARS

# White space as Python's str.strip() sees it (str.isspace), spelled out so that ECMA-262 and Python regex
# engines read the class alike (their \s differ). A test checks it against str.isspace for every code point.
WHITESPACE_CLASS = r"\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_BLANK = f"[^{WHITESPACE_CLASS}]"


def trimmed_length_pattern(most: int) -> str:
    """Strings that, once surrounding white space is trimmed, are 1 to ``most`` characters long."""
    space = f"[{WHITESPACE_CLASS}]*"
    return rf"^{space}{NOT_BLANK}(?:[\s\S]{{0,{most - 2}}}{NOT_BLANK})?{space}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema}


# Every response, errors included, carries these.
_COMMON_HEADERS = {
    "X-Request-Id": _header(
        "The request's id, also in its log lines: the caller's own X-Request-Id when that is 1 to 128 of"
        " A-Z a-z 0-9 . _ : -, otherwise a new one.",
        {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
    ),
    "X-Content-Type-Options": _header("Always nosniff.", {"type": "string", "enum": ["nosniff"]}),
}
_RETRY_AFTER = {"Retry-After": _header("Whole seconds to wait before trying again.", {"type": "integer", "minimum": 1})}
_NO_STORE = {
    "Cache-Control": _header("Responses with tokens are never cached.", {"type": "string", "enum": ["no-store"]})
}
_CHALLENGE = {"WWW-Authenticate": _header("A Bearer challenge (RFC 6750).", {"type": "string", "pattern": "^Bearer "})}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_COMMON_HEADERS, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ref("Error"), description, headers)


_PROXY_ERROR = {"400": _error("A trusted proxy (TRUSTED_PROXIES) sent a malformed X-Forwarded-For header.")}
_BODY_ERRORS = {
    "400": _error(
        "The body is malformed, or a field is missing, mistyped or breaks a rule (the message names it); or a"
        " trusted proxy sent a malformed X-Forwarded-For header."
    ),
    "413": _error("The body is larger than 16 KiB."),
    "415": _error("The body is not JSON (a missing Content-Type is read as JSON)."),
}
_TOKEN_ERROR = {"401": _error("The Authorization header is present but the token is invalid.", _CHALLENGE)}
_OVERLOADED = {"503": _error("Password hashing is saturated; the request was refused at once.", _RETRY_AFTER)}
_STRING = {"type": "string"}
_USER_ID = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
_TOKEN = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"}

OPENAPI_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "mixauth",
        "version": __version__,
        "description": "Self-hosted authentication compatible with the Appmixer user API.",
    },
    "paths": {
        "/user/auth": {
            "post": {
                "operationId": "signIn",
                "summary": "Sign in with a username or an email, and a password.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SignInRequest")}},
                },
                "responses": {
                    "200": _json(_ref("SignInResponse"), "Signed in.", _NO_STORE),
                    **_BODY_ERRORS,
                    **_TOKEN_ERROR,
                    "403": _error("Unknown user or wrong password (one answer for both)."),
                    "429": _error("Too many failed sign-ins for this account or from this IP address.", _RETRY_AFTER),
                    **_OVERLOADED,
                },
            }
        },
        "/user": {
            "post": {
                "operationId": "createUser",
                "summary": "Create a user; open unless API_USER_CREATE_SCOPE is set.",
                "security": [{}, {"bearerAuth": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateUserRequest")}},
                },
                "responses": {
                    "200": _json(_ref("TokenResponse"), "Created; a token for the new user.", _NO_STORE),
                    **_BODY_ERRORS,
                    "401": _error(
                        "A token is required (API_USER_CREATE_SCOPE is set) or the token is invalid.", _CHALLENGE
                    ),
                    "403": _error("The token lacks every scope in API_USER_CREATE_SCOPE."),
                    "409": _error("The username or the email is already taken."),
                    "429": _error("Too many signup attempts for this email or from this IP address.", _RETRY_AFTER),
                    **_OVERLOADED,
                },
            },
            "get": {
                "operationId": "getUser",
                "summary": "The user the bearer token belongs to.",
                "security": [{"bearerAuth": []}],
                "responses": {
                    "200": _json(_ref("UserDetails"), "The current user."),
                    **_PROXY_ERROR,
                    "401": _error("No token, or an invalid, expired or revoked one.", _CHALLENGE),
                },
            },
        },
        "/user/change-password": {
            "post": {
                "operationId": "changePassword",
                "summary": "Replace the caller's password; every token issued before is refused from then on.",
                "security": [{"bearerAuth": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChangePasswordRequest")}},
                },
                "responses": {
                    "200": _json(_ref("TokenResponse"), "Changed; a fresh token, the only valid one now.", _NO_STORE),
                    **_BODY_ERRORS,
                    "401": _error("No token, or an invalid, expired or revoked one.", _CHALLENGE),
                    "403": _error("The old password is wrong (counted as a failed sign-in of the account)."),
                    "429": _error("Too many failed sign-ins for this account or from this IP address.", _RETRY_AFTER),
                    **_OVERLOADED,
                },
            }
        },
        "/user/logout": {
            "post": {
                "operationId": "logOut",
                "summary": "Revoke every token of the caller, the one sent included. No body is read.",
                "security": [{"bearerAuth": []}],
                "responses": {
                    "200": _json({"type": "object", "maxProperties": 0}, "Logged out everywhere: {}."),
                    **_PROXY_ERROR,
                    "401": _error("No token, or an invalid, expired or revoked one.", _CHALLENGE),
                },
            }
        },
        "/health/live": {
            "get": {
                "operationId": "healthLive",
                "summary": "The process answers. Open, never rate limited.",
                "responses": {
                    "200": _json(_ref("Health"), "Alive."),
                    **_PROXY_ERROR,
                    **_TOKEN_ERROR,
                },
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "healthReady",
                "summary": "The database answers a query (within 2 s). Open, never rate limited.",
                "responses": {
                    "200": _json(_ref("Health"), "Ready."),
                    **_PROXY_ERROR,
                    **_TOKEN_ERROR,
                    "503": _error("The database did not answer (code not_ready)."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI document."),
                    **_PROXY_ERROR,
                    **_TOKEN_ERROR,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["ok"]}},
            },
            "SignInRequest": {
                "type": "object",
                "description": "With a username (not blank) the user is found by username, otherwise by email;"
                " either matches ignoring case and surrounding white space. Other fields are ignored.",
                "required": ["password"],
                "properties": {"username": _STRING, "email": _STRING, "password": _STRING},
                "anyOf": [
                    {"required": ["username"], "properties": {"username": {"pattern": NOT_BLANK}}},
                    {"required": ["email"], "properties": {"email": {"pattern": NOT_BLANK}}},
                ],
            },
            "CreateUserRequest": {
                "type": "object",
                "description": "Other fields are ignored; id, scope, plan and isActive are never taken from the body.",
                "required": ["username", "email", "password"],
                "properties": {
                    "username": {
                        **_STRING,
                        "pattern": trimmed_length_pattern(USERNAME_MAX_CHARS),
                        "description": f"1 to {USERNAME_MAX_CHARS} characters once surrounding white space is"
                        " trimmed, with no control or invisible characters (Unicode categories Cc, Cf, Cs, Co,"
                        " Cn, Zl, Zp). Unique ignoring case.",
                    },
                    "email": {
                        **_STRING,
                        "format": "email",
                        "pattern": trimmed_length_pattern(EMAIL_MAX_CHARS),
                        "description": "A syntactically valid address (special-use domains such as .test and"
                        f" .localhost are refused), at most {EMAIL_MAX_CHARS} characters once trimmed. Stored as"
                        " given; unique ignoring case.",
                    },
                    "password": {
                        **_STRING,
                        "minLength": 6,
                        "description": "At least 6 characters (PASSWORD_MIN_LENGTH raises it) and at most"
                        f" {BCRYPT_MAX_BYTES} bytes in UTF-8, both after NFKC normalisation.",
                    },
                    "metadata": {
                        "type": ["object", "null"],
                        "description": "Kept and returned by GET /user; null is the same as leaving it out.",
                    },
                },
            },
            "ChangePasswordRequest": {
                "type": "object",
                "description": "Other fields are ignored.",
                "required": ["oldPassword", "newPassword"],
                "properties": {
                    "oldPassword": _STRING,
                    "newPassword": {
                        **_STRING,
                        "minLength": 6,
                        "description": "The signup rules: at least 6 characters (PASSWORD_MIN_LENGTH raises it) and"
                        f" at most {BCRYPT_MAX_BYTES} bytes in UTF-8, both after NFKC normalisation.",
                    },
                },
            },
            "UserSummary": {
                "type": "object",
                "required": ["id", "username", "isActive", "email", "plan"],
                "additionalProperties": False,
                "properties": {
                    "id": _USER_ID,
                    "username": _STRING,
                    "isActive": {"type": "boolean"},
                    "email": _STRING,
                    "plan": _STRING,
                },
            },
            "UserDetails": {
                "type": "object",
                "required": ["id", "username", "isActive", "email", "scope", "plan"],
                "additionalProperties": False,
                "properties": {
                    "id": _USER_ID,
                    "username": _STRING,
                    "isActive": {"type": "boolean"},
                    "email": _STRING,
                    "scope": {"type": "array", "items": _STRING},
                    "plan": _STRING,
                    "metadata": {"type": "object"},
                },
            },
            "SignInResponse": {
                "type": "object",
                "required": ["user", "token"],
                "additionalProperties": False,
                "properties": {"user": _ref("UserSummary"), "token": _TOKEN},
            },
            "TokenResponse": {
                "type": "object",
                "required": ["token"],
                "additionalProperties": False,
                "properties": {"token": _TOKEN},
            },
            "Error": {
                "type": "object",
                "required": ["error", "message", "statusCode", "code"],
                "additionalProperties": False,
                "properties": {
                    "error": _STRING,
                    "message": _STRING,
                    "statusCode": {"type": "integer", "minimum": 400, "maximum": 599},
                    "code": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                },
            },
        },
    },
}
