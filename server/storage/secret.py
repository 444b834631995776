"""The JWT signing secret generated on first start and kept in the data directory (mode 0600)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from pathlib import Path

from server.config import MIN_SECRET_BYTES
from server.storage import StorageError, prepare_data_dir

SECRET_FILE = "jwt-secret"  # noqa: S105 (a file name, not a secret)
SECRET_BYTES = 64


def load_or_create_secret(data_dir: Path) -> bytes:
    """Return the kept secret, creating it if no process has yet.

    The secret is written and synced under a temporary name, then linked into place: the link either
    appears whole or not at all, so racing starts agree on one secret and a crash never leaves an empty file.
    """
    prepare_data_dir(data_dir)
    path = data_dir / SECRET_FILE
    try:
        return _load_or_create(data_dir, path)
    except OSError as exc:
        # A read-only data directory, a secret file owned by another user: one line naming the file.
        raise StorageError(f"cannot use {exc.filename or path}: {exc.strerror or exc}") from None


def _load_or_create(data_dir: Path, path: Path) -> bytes:
    if path.exists():
        return _read(path)
    secret = secrets.token_bytes(SECRET_BYTES)
    temporary = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(base64.urlsafe_b64encode(secret) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return _read(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    _sync_directory(data_dir)
    return secret


def _read(path: Path) -> bytes:
    text = path.read_bytes().strip()
    try:
        secret = base64.urlsafe_b64decode(text)
    except ValueError:
        secret = b""
    if len(secret) < MIN_SECRET_BYTES:
        raise StorageError(f"{path} does not hold a valid secret; remove it to generate a new one")
    return secret


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
