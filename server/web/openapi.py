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
from server.users import PLAN_MAX_CHARS, SCOPE_NAME_PATTERN
from server.validation import EMAIL_MAX_CHARS, RAW_SLACK, USERNAME_MAX_CHARS
from server.web.user_requests import MAX_LIMIT, MAX_OFFSET

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

# Users, for admins (GET/PUT/DELETE /users..., POST /user/reset-password): admin means a valid token whose user
# holds the admin scope now.
_ADMIN_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_ADMIN_DENIED = {
    "401": _error("No token, or an invalid, expired or revoked one.", _CHALLENGE),
    "403": _error("The token's user does not hold the admin scope."),
}
_NO_USER = {"404": _error("No user has this id (also for a malformed id): code user_not_found.")}
_USER_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The user's id (24 lower-case hex characters; anything else is a 404).",
    "schema": _STRING,
}
_FILTER_PATTERN = r"^(?:(?:scope|plan|vendor):[\s\S]{1,256}|isActive:(?:true|false))$"
_LISTING_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "filter",
        "in": "query",
        "description": "FIELD:VALUE, repeatable, all must hold. scope:S and vendor:V match users holding that name;"
        " plan:P matches the plan exactly; isActive:true|false. The value is all after the first colon.",
        "schema": {
            "type": "array",
            "items": {
                "type": "string",
                "pattern": _FILTER_PATTERN,
            },
        },
        "style": "form",
        "explode": True,
    },
    {
        "name": "pattern",
        "in": "query",
        "description": "A literal, case-insensitive substring of the username (matched against its NFKC, case-folded"
        " key); never a regular expression or a LIKE pattern: % and _ are plain characters.",
        "schema": {"type": "string", "maxLength": 4 * USERNAME_MAX_CHARS},
    },
]
_PAGING_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "sort",
        "in": "query",
        "description": "FIELD:1 (ascending) or FIELD:-1; usernames and emails compare by their case-insensitive keys;"
        " ties are broken by id, ascending. Default created:-1.",
        "schema": {"type": "string", "pattern": "^(?:created|username|email):-?1$"},
    },
    {
        "name": "limit",
        "in": "query",
        "description": "Page size (default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
    {
        "name": "offset",
        "in": "query",
        "description": "Users to skip (default 0); past the end, an empty page.",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
    },
]
_BAD_PARAMETER = {"400": _error("A malformed filter, pattern, sort, limit or offset (the message names it).")}
_TRIMMED_VENDOR = r"^[^\s](?:[\s\S]{0,126}[^\s])?$"

_USER_ADMIN_PATHS: dict[str, Any] = {
    "/users": {
        "get": {
            "operationId": "listUsers",
            "summary": "Users, filtered, sorted and paged (admin).",
            "security": _ADMIN_SECURITY,
            "parameters": [*_LISTING_PARAMETERS, *_PAGING_PARAMETERS],
            "responses": {
                "200": _json(
                    {"type": "array", "items": _ref("UserObject")},
                    "One page of users.",
                    {
                        "X-Total-Count": _header(
                            "How many users match, ignoring limit and offset.", {"type": "integer", "minimum": 0}
                        )
                    },
                ),
                **_BAD_PARAMETER,
                **_ADMIN_DENIED,
            },
        }
    },
    "/users/count": {
        "get": {
            "operationId": "countUsers",
            "summary": "How many users match the filters and pattern (admin).",
            "security": _ADMIN_SECURITY,
            "parameters": _LISTING_PARAMETERS,
            "responses": {
                "200": _json(_ref("Count"), "The count."),
                **_BAD_PARAMETER,
                **_ADMIN_DENIED,
            },
        }
    },
    "/users/{id}": {
        "get": {
            "operationId": "getUserById",
            "summary": "One user (admin).",
            "security": _ADMIN_SECURITY,
            "parameters": [_USER_ID_PARAMETER],
            "responses": {
                "200": _json(_ref("UserObject"), "The user."),
                **_PROXY_ERROR,
                **_ADMIN_DENIED,
                **_NO_USER,
            },
        },
        "put": {
            "operationId": "updateUser",
            "summary": "Change a user (admin); a password set here revokes the user's tokens.",
            "security": _ADMIN_SECURITY,
            "parameters": [_USER_ID_PARAMETER],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("UpdateUserRequest")}}},
            "responses": {
                "200": _json(_ref("UserObject"), "The user as now stored."),
                **_BODY_ERRORS,
                **_ADMIN_DENIED,
                **_NO_USER,
                "409": _error(
                    "The username or email is taken (username_taken, email_taken), the username looks like a taken"
                    " one (username_confusable), or the change would leave no admin (last_admin)."
                ),
                **_OVERLOADED,
            },
        },
        "delete": {
            "operationId": "deleteUser",
            "summary": "Delete a user at once, revoking their tokens (admin).",
            "security": _ADMIN_SECURITY,
            "parameters": [_USER_ID_PARAMETER],
            "responses": {
                "200": _json(_ref("DeleteTicket"), "Deleted; the ticket's status says so."),
                **_PROXY_ERROR,
                **_ADMIN_DENIED,
                **_NO_USER,
                "409": _error("The user is the last one holding the admin scope (last_admin)."),
            },
        },
    },
    "/users/{id}/delete-status/{ticket}": {
        "get": {
            "operationId": "getDeleteStatus",
            "summary": "How a deletion went (admin); tickets are kept at least 24 hours.",
            "security": _ADMIN_SECURITY,
            "parameters": [
                _USER_ID_PARAMETER,
                {"name": "ticket", "in": "path", "required": True, "schema": _STRING},
            ],
            "responses": {
                "200": _json(_ref("DeleteStatus"), "The deletion's progress."),
                **_PROXY_ERROR,
                **_ADMIN_DENIED,
                "404": _error("No ticket has this id for this user (delete_ticket_not_found)."),
            },
        }
    },
    "/user/reset-password": {
        "post": {
            "operationId": "resetPassword",
            "summary": "Set the password of the user with this email, revoking their tokens (admin).",
            "security": _ADMIN_SECURITY,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ResetPasswordRequest")}},
            },
            "responses": {
                "200": _json({"type": "object", "maxProperties": 0}, "Done."),
                **_BODY_ERRORS,
                **_ADMIN_DENIED,
                "404": _error("No user has this email (user_not_found)."),
                **_OVERLOADED,
            },
        }
    },
}

_PASSWORD_SCHEMA = {
    **_STRING,
    "minLength": 6,
    "description": "At least 6 characters (PASSWORD_MIN_LENGTH raises it) and at most"
    f" {BCRYPT_MAX_BYTES} bytes in UTF-8, both after NFKC normalisation.",
}
_USER_ADMIN_SCHEMAS: dict[str, Any] = {
    "UserObject": {
        "type": "object",
        "required": ["id", "username", "email", "isActive", "scope", "plan", "vendor", "metadata", "created"],
        "additionalProperties": False,
        "properties": {
            "id": _USER_ID,
            "username": _STRING,
            "email": _STRING,
            "isActive": {"type": "boolean"},
            "scope": {"type": "array", "items": _STRING},
            "plan": _STRING,
            "vendor": {"type": "array", "items": _STRING},
            "metadata": {"type": "object"},
            "created": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"},
        },
    },
    "Count": {
        "type": "object",
        "required": ["count"],
        "additionalProperties": False,
        "properties": {"count": {"type": "integer", "minimum": 0}},
    },
    "UpdateUserRequest": {
        "type": "object",
        "description": "Any of these fields, at least one; any other field is refused (400 naming it). The signup"
        " rules apply to username, email and password.",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "scope": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "pattern": SCOPE_NAME_PATTERN.pattern},
            },
            "vendor": {
                "description": "A vendor name or a list of them (empty clears); each 1 to 128 characters, without"
                " surrounding white space or invisible characters.",
                "oneOf": [
                    {"type": "string", "pattern": _TRIMMED_VENDOR},
                    {"type": "array", "items": {"type": "string", "pattern": _TRIMMED_VENDOR}},
                ],
            },
            "metadata": {"type": "object", "description": "Replaces the stored object ({} clears it)."},
            "email": {**_STRING, "format": "email", "pattern": trimmed_length_pattern(EMAIL_MAX_CHARS)},
            "username": {**_STRING, "pattern": trimmed_length_pattern(USERNAME_MAX_CHARS)},
            "password": _PASSWORD_SCHEMA,
            "isActive": {"type": "boolean"},
            "plan": {**_STRING, "pattern": trimmed_length_pattern(PLAN_MAX_CHARS)},
        },
    },
    "ResetPasswordRequest": {
        "type": "object",
        "required": ["email", "password"],
        "properties": {"email": _STRING, "password": _PASSWORD_SCHEMA},
    },
    "DeleteTicket": {
        "type": "object",
        "required": ["ticket"],
        "additionalProperties": False,
        "properties": {"ticket": {"type": "string", "format": "uuid"}},
    },
    "DeleteStatus": {
        "type": "object",
        "required": ["status", "stepsDone", "stepsTotal"],
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["in-progress", "completed", "failed"]},
            "stepsDone": {"type": "integer", "minimum": 0},
            "stepsTotal": {"type": "integer", "minimum": 0},
        },
    },
}

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
        "/user/forgot-password": {
            "post": {
                "operationId": "forgotPassword",
                "summary": "Send a password reset code to the user with this email, if there is one.",
                "description": "The answer is the same, in body, headers and timing, whether a user has the"
                " address or not. For a user who has it, a reset code (256 random bits, URL-safe) is posted in"
                " the background to WEBHOOK_USER_FORGOT_PASSWORD as {code, email, userId, created, link},"
                " signed with WEBHOOK_SECRET in X-Mixauth-Signature when that is set. The code lives"
                " FORGOT_PASSWORD_CODE_TTL (1 hour), works once, and a newer request replaces it.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ForgotPasswordRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Empty"), "Accepted: a code is on its way if the address is a user's."),
                    **_BODY_ERRORS,
                    **_TOKEN_ERROR,
                    "429": _error(
                        "Too many requests for this email address (known or not) or from this IP address.",
                        _RETRY_AFTER,
                    ),
                },
            }
        },
        "/user/forgot-password/reset": {
            "post": {
                "operationId": "resetForgottenPassword",
                "summary": "Set a new password with a reset code; every token of the user is revoked.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("PasswordResetRequest")}},
                },
                "responses": {
                    "200": _json(_ref("Empty"), "The password is changed; the user's earlier tokens are refused."),
                    **_BODY_ERRORS,
                    **_TOKEN_ERROR,
                    "429": _error("Too many reset attempts from this IP address.", _RETRY_AFTER),
                    **_OVERLOADED,
                },
            }
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
                    "200": _json(_ref("Readiness"), "Ready, with the state of each backend."),
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
        **_USER_ADMIN_PATHS,
    },
    "components": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        "schemas": {
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string", "enum": ["ok"]}},
            },
            "Readiness": {
                "type": "object",
                "required": ["status", "database", "rate_limiter"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok"]},
                    "database": {"type": "string", "enum": ["ok"]},
                    "rate_limiter": {
                        "type": "string",
                        "enum": ["memory", "redis", "local", "deny"],
                        "description": "Where limits are counted: memory (no REDIS_URL), redis, or while Redis is "
                        "down local (in this instance's memory) or deny (rate-limited calls get 503).",
                    },
                },
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
            "ForgotPasswordRequest": {
                "type": "object",
                "description": "Other fields are ignored.",
                "required": ["email"],
                "properties": {
                    "email": {
                        **_STRING,
                        "pattern": NOT_BLANK,
                        "maxLength": RAW_SLACK * EMAIL_MAX_CHARS,
                        "description": "Matched as sign-in matches it (ignoring case and surrounding white"
                        " space); any text is accepted, and an address no user has gets the same answer.",
                    }
                },
            },
            "PasswordResetRequest": {
                "type": "object",
                "description": "Other fields are ignored. A code that is unknown, expired, used or replaced gives"
                " 400 invalid_reset_code; a new password that breaks a rule gives 400 and leaves the code usable.",
                "required": ["code", "password"],
                "properties": {
                    "code": {**_STRING, "description": "The code the webhook delivered."},
                    "password": {
                        **_STRING,
                        "minLength": 6,
                        "description": "The new password, by the signup rules: at least 6 characters"
                        f" (PASSWORD_MIN_LENGTH) and at most {BCRYPT_MAX_BYTES} bytes in UTF-8, after NFKC.",
                    },
                },
            },
            "Empty": {"type": "object", "additionalProperties": False, "maxProperties": 0},
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
            **_USER_ADMIN_SCHEMAS,
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

# Operations that never read the database: the probes and this document.
_WITHOUT_DATABASE = frozenset({"healthLive", "healthReady", "getOpenApi"})
# Operations counted by the rate limiter, which can be Redis (REDIS_URL).
_RATE_LIMITED = frozenset({"signIn", "createUser", "forgotPassword", "resetForgottenPassword"})
_DATABASE_UNAVAILABLE = "the database (PostgreSQL, DATABASE_URL) does not answer (code database_unavailable)"
_LIMITER_UNAVAILABLE = "Redis does not answer and RATE_LIMIT_REDIS_FAILURE is deny (code rate_limiter_unavailable)"


def _add_backend_outages(document: dict[str, Any]) -> None:
    """Every operation that reads the database can answer 503 while PostgreSQL is away, and every rate-limited
    one while Redis is (with RATE_LIMIT_REDIS_FAILURE=deny); both with Retry-After. One 503 per operation, so
    the reasons are joined into its description."""
    for operations in document["paths"].values():
        for operation in operations.values():
            if operation["operationId"] in _WITHOUT_DATABASE:
                continue
            reasons = [_DATABASE_UNAVAILABLE]
            if operation["operationId"] in _RATE_LIMITED:
                reasons.append(_LIMITER_UNAVAILABLE)
            existing = operation["responses"].get("503")
            if existing is not None:
                reasons.insert(0, existing["description"].rstrip("."))
            description = "; or ".join(reasons)
            operation["responses"]["503"] = _error(description[0].upper() + description[1:] + ".", _RETRY_AFTER)


_add_backend_outages(OPENAPI_DOCUMENT)
