"""Where mixauth keeps its state, and the one error a backend raises when it cannot start."""

from pathlib import Path


class StorageError(Exception):
    """The data directory, database or kept secret cannot be used; the message is one line for an operator."""


def prepare_data_dir(data_dir: Path, *, create: bool = True) -> None:
    """Make sure ``data_dir`` is a directory, creating it (owner only) when ``create`` says so.

    Every command and the server go through here, so that a path that is a file, or that cannot be
    created, is one line naming the data directory rather than an errno ("File exists").
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise StorageError(f"data directory {data_dir} is not a directory")
    if not create:
        return
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:  # made a file between the check and here
        raise StorageError(f"data directory {data_dir} is not a directory") from None
    except OSError as exc:
        raise StorageError(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from None
