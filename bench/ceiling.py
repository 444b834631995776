"""The ceiling server: bare aiohttp answering every GET with a fixed JSON body, nothing else.

``python -m bench.ceiling --port N [--body JSON]`` serves on 127.0.0.1. It answers GET /user (any path, in
fact) with the same body GET /user on mixauth returns, so the difference between the two is mixauth's own
work: middlewares, token check, database read and JSON encoding. It uses uvloop when it is importable, as
mixauth does (``--loop asyncio`` for the standard loop), and says which loop it runs on at GET /__loop.

It imports nothing from the benchmark or the server, so its start-up time is aiohttp's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

SAMPLE_BODY: dict[str, Any] = {
    "id": "6b0a5fe7ead9871336ddd6c5",
    "username": "benchxxxxxxxxxxx",
    "isActive": False,
    "email": "benchxxxxxxxxxxx@example.com",
    "scope": ["user"],
    "plan": "free",
}


def loop_factory(wanted: str = "uvloop") -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when wanted and importable, else asyncio's default: the same choice as mixauth's."""
    if wanted == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def build_app(body: bytes) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def loop_name(request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        return web.json_response({"loop": f"{type(loop).__module__}.{type(loop).__qualname__}"})

    app = web.Application()
    app.router.add_get("/__loop", loop_name)
    app.router.add_get("/{tail:.*}", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", default=json.dumps(SAMPLE_BODY), help="the JSON body to answer with")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvloop if importable")
    args = parser.parse_args()
    web.run_app(
        build_app(args.body.encode()),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory(args.loop)(),
    )


if __name__ == "__main__":
    main()
