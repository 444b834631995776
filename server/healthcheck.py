"""The container's health check: ``python3 -m server.healthcheck`` asks the local server's readiness endpoint.

Standard library only, so that the image needs no curl and the check starts in a few tens of milliseconds.
By default it reads the port from ``PORT`` (default 2200) and asks 127.0.0.1 unless ``HOST`` names a
specific address; ``--url`` and ``--timeout`` override that. Exit code 0 when the server answers with 200,
1 otherwise, with one line on stderr saying why. A misused command line is 1 too: Docker reserves 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import NoReturn

TIMEOUT_SECONDS = 4.0
UNHEALTHY = 1
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - addresses to compare with, not to bind


def readiness_url(environ: Mapping[str, str]) -> str:
    host = environ.get("HOST", "").strip()
    host = "127.0.0.1" if host in _WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{environ.get('PORT', '2200').strip()}/health/ready"


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"mixauth healthcheck: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(UNHEALTHY)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:  # an hour is more than any health check waits
        raise argparse.ArgumentTypeError(f"expected seconds above 0 and at most 3600, got {value!r}")
    return seconds


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    default_url = readiness_url(environ)
    parser = _ArgumentParser(
        prog="python3 -m server.healthcheck",
        description="Ask a mixauth server whether it is ready: exit 0 when it answers 200, else 1.",
    )
    parser.add_argument(
        "--url",
        type=_http_url,
        default=default_url,
        help=f"the readiness endpoint to ask (default, from HOST and PORT: {default_url})",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the answer (default: {TIMEOUT_SECONDS:g})",
    )
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser(os.environ if environ is None else environ).parse_args(argv)
    url: str = args.url
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310 - http(s) only
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"mixauth healthcheck: {url}: {exc}", file=sys.stderr)
        return UNHEALTHY
    if status != 200:
        print(f"mixauth healthcheck: {url}: status {status}", file=sys.stderr)
        return UNHEALTHY
    return 0


if __name__ == "__main__":
    sys.exit(main())
