"""The JWT signing secret generated on first start and kept in the data directory (mode 0600)."""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

SECRET_FILE = "jwt-secret"  # noqa: S105 (a file name, not a secret)
SECRET_BYTES = 64


def load_or_create_secret(data_dir: Path) -> bytes:
    """Return the kept secret, creating it atomically if no process has yet (so racing starts agree)."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)
    secret = secrets.token_bytes(SECRET_BYTES)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(base64.urlsafe_b64encode(secret) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret


def _read(path: Path) -> bytes:
    text = path.read_bytes().strip()
    try:
        secret = base64.urlsafe_b64decode(text)
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ValueError(f"{path} does not hold a valid secret; remove it to generate a new one")
    return secret
