"""The OpenAPI 3.1 description of the API, served at GET /openapi.json.

Tests validate real responses against these schemas, so the document cannot drift from the server.
"""

from __future__ import annotations

from typing import Any

from server import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ref("Error"), description, headers)


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 1}}
}
_BODY_ERRORS = {
    "400": _error("The body is malformed, or a field is missing, mistyped or breaks a rule."),
    "413": _error("The body is larger than 16 KiB."),
    "415": _error("The body is not JSON."),
}
_TOKEN_ERROR = {"401": _error("The Authorization header is present but the token is invalid.")}
_STRING = {"type": "string"}

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
                    "200": _json(_ref("SignInResponse"), "Signed in."),
                    **_BODY_ERRORS,
                    **_TOKEN_ERROR,
                    "403": _error("Unknown user or wrong password (one answer for both)."),
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
                    "200": _json(_ref("TokenResponse"), "Created; a token for the new user."),
                    **_BODY_ERRORS,
                    "401": _error("A token is required (API_USER_CREATE_SCOPE is set) or the token is invalid."),
                    "403": _error("The token lacks every scope in API_USER_CREATE_SCOPE."),
                    "409": _error("The username or the email is already taken."),
                    "429": _error("Too many signup attempts for this email or from this IP address.", _RETRY_AFTER),
                },
            },
            "get": {
                "operationId": "getUser",
                "summary": "The user the bearer token belongs to.",
                "security": [{"bearerAuth": []}],
                "responses": {
                    "200": _json(_ref("UserDetails"), "The current user."),
                    "401": _error("No token, or an invalid, expired or revoked one."),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document."), **_TOKEN_ERROR},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "SignInRequest": {
                "type": "object",
                "required": ["password"],
                "properties": {
                    "username": {**_STRING, "description": "Required unless email is given."},
                    "email": {**_STRING, "description": "Required unless username is given."},
                    "password": _STRING,
                },
            },
            "CreateUserRequest": {
                "type": "object",
                "required": ["username", "email", "password"],
                "properties": {
                    "username": {**_STRING, "minLength": 1, "maxLength": 128},
                    "email": {**_STRING, "format": "email", "maxLength": 254},
                    "password": {**_STRING, "minLength": 6, "description": "At most 72 bytes in UTF-8."},
                    "metadata": {"type": "object", "description": "Kept and returned by GET /user."},
                },
            },
            "UserSummary": {
                "type": "object",
                "required": ["id", "username", "isActive", "email", "plan"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
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
                    "id": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
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
                "properties": {"user": _ref("UserSummary"), "token": _STRING},
            },
            "TokenResponse": {
                "type": "object",
                "required": ["token"],
                "additionalProperties": False,
                "properties": {"token": _STRING},
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
