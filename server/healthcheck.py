"""The container's health check: ``python3 -m server.healthcheck`` asks the local server's readiness endpoint.

Standard library only, so that the image needs no curl and the check starts in a few tens of milliseconds.
It reads the port from ``PORT`` (default 2200) and asks 127.0.0.1 unless ``HOST`` names a specific
address; exit code 0 when the server answers ``/health/ready`` with 200, 1 otherwise, with one line on
stderr saying why.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_SECONDS = 4.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - addresses to compare with, not to bind


def readiness_url(environ: Mapping[str, str]) -> str:
    host = environ.get("HOST", "").strip()
    host = "127.0.0.1" if host in _WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{environ.get('PORT', '2200').strip()}/health/ready"


def main(environ: Mapping[str, str] | None = None) -> int:
    url = readiness_url(os.environ if environ is None else environ)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 - a local http URL
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"mixauth healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"mixauth healthcheck: {url}: status {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
