"""The route table: every path the API serves, its handler, and who may call it, read top to bottom.

Each row names its access rule beside the route, and ``add_routes`` registers both together, so a route
cannot be added without one. The middleware's bearer check refuses a matched route that has no rule all the
same (closed when in doubt), so a route registered some other way is never open by mistake.

- ``OPEN``: anyone (an ``Authorization`` header that is present must still be valid).
- ``AUTHENTICATED``: a valid bearer token of an existing user.
- ``ADMIN``: a valid token whose user holds the ``admin`` scope now.
- ``Requirement(scopes=...)``: a valid token whose user holds one of those scopes (none: open).
- ``Requirement(own_bearer=True)``: the route checks a bearer token of its own (the metrics token).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from server.config import Settings
from server.service import ADMIN_SCOPE
from server.web import admin_handlers, handlers, recovery_handlers
from server.web.keys import OPEN, Requirement

AUTHENTICATED = Requirement(authenticated=True)
ADMIN = Requirement(authenticated=True, scopes=frozenset({ADMIN_SCOPE}))
# Any segment but "count": /users/count is its own resource, and another method on it (OPTIONS, PUT) must
# answer 405 with its own Allow, not be taken for a user id. A malformed id still reaches the handler (404).
USER_PATH = "/users/{id:(?!count$)[^/]+}"


@dataclass(eq=False, frozen=True, slots=True)
class Route:
    """One route of the API: its method, path, handler, name and access rule."""

    method: str
    path: str
    handler: Handler
    name: str
    access: Requirement


def api_routes(settings: Settings) -> list[Route]:
    """The API's routes for ``settings`` (which decide who may create users and where metrics are served)."""
    routes = [
        Route("GET", "/health/live", handlers.health_live, "health_live", OPEN),
        Route("GET", "/health/ready", handlers.health_ready, "health_ready", OPEN),
        Route("GET", "/openapi.json", handlers.get_openapi, "openapi", OPEN),
        Route("POST", "/user/auth", handlers.sign_in, "sign_in", OPEN),
        # Before POST /user: routes of one path are tried in this order, and this is the most frequent call.
        Route("GET", "/user", handlers.get_user, "get_user", AUTHENTICATED),
        Route(
            "POST",
            "/user",
            handlers.create_user,
            "create_user",
            Requirement(scopes=frozenset(settings.api_user_create_scope)),
        ),
        # Users, for admins.
        Route("GET", "/users", admin_handlers.list_users, "list_users", ADMIN),
        Route("GET", "/users/count", admin_handlers.count_users, "count_users", ADMIN),
        Route("GET", USER_PATH, admin_handlers.get_user_by_id, "get_user_by_id", ADMIN),
        Route("PUT", USER_PATH, admin_handlers.update_user, "update_user", ADMIN),
        Route("DELETE", USER_PATH, admin_handlers.delete_user, "delete_user", ADMIN),
        Route("GET", "/users/{id}/delete-status/{ticket}", admin_handlers.delete_status, "delete_status", ADMIN),
        Route("POST", "/user/reset-password", admin_handlers.reset_password, "reset_password", ADMIN),
        Route("POST", "/user/forgot-password", recovery_handlers.forgot_password, "forgot_password", OPEN),
        Route(
            "POST",
            "/user/forgot-password/reset",
            recovery_handlers.reset_forgotten_password,
            "reset_forgotten_password",
            OPEN,
        ),
        Route("POST", "/user/change-password", handlers.change_password, "change_password", AUTHENTICATED),
        Route("POST", "/user/logout", handlers.log_out, "log_out", AUTHENTICATED),
    ]
    if settings.metrics_enabled and settings.metrics_port is None:
        routes.append(Route("GET", "/metrics", handlers.get_metrics, "metrics", Requirement(own_bearer=True)))
    return routes


def add_routes(app: web.Application, rules: dict[str, Requirement], routes: Iterable[Route]) -> None:
    """Register each route, and its access rule in ``rules`` (the middleware's, by route name)."""
    for route in routes:
        if route.name in rules:
            raise ValueError(f"two routes are named {route.name!r}")
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
        rules[route.name] = route.access
