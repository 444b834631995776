"""Where mixauth keeps its state, and the one error a backend raises when it cannot start."""


class StorageError(Exception):
    """The data directory, database or kept secret cannot be used; the message is one line for an operator."""
