"""Handlers of the admin user calls: parse the request into the user service's input, one call, the answer.

Who may call them is the route table's business (``ADMIN`` in server.web.routes); users become JSON through
``server.views.user_object`` only.
"""

from __future__ import annotations

from aiohttp import web

from server.views import user_object
from server.web.bodies import json_response, read_json_object
from server.web.keys import USERS
from server.web.user_requests import parse_listing, parse_password_reset, parse_update

VIA = "admin"


async def list_users(request: web.Request) -> web.Response:
    page = await request.app[USERS].list_users(parse_listing(request.query))
    response = json_response([user_object(user) for user in page.users])
    response.headers["X-Total-Count"] = str(page.total)
    return response


async def count_users(request: web.Request) -> web.Response:
    count = await request.app[USERS].count_users(parse_listing(request.query, paged=False))
    return json_response({"count": count})


async def get_user_by_id(request: web.Request) -> web.Response:
    user = await request.app[USERS].get(request.match_info["id"])
    return json_response(user_object(user))


async def update_user(request: web.Request) -> web.Response:
    update = parse_update(await read_json_object(request))
    user = await request.app[USERS].update(request.match_info["id"], update, via=VIA)
    return json_response(user_object(user))


async def delete_user(request: web.Request) -> web.Response:
    ticket = await request.app[USERS].delete(request.match_info["id"], via=VIA)
    return json_response({"ticket": ticket.id})


async def delete_status(request: web.Request) -> web.Response:
    ticket = await request.app[USERS].delete_status(request.match_info["id"], request.match_info["ticket"])
    return json_response({"status": ticket.status, "stepsDone": ticket.steps_done, "stepsTotal": ticket.steps_total})


async def reset_password(request: web.Request) -> web.Response:
    reset = parse_password_reset(await read_json_object(request))
    await request.app[USERS].reset_password(reset, via=VIA)
    return json_response({})
