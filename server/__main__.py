"""``python -m server``: serve the API, or run an admin command (see ``server.cli``)."""

import gc
import sys

# No garbage collection while the modules load and the server starts: they make objects that live as long
# as the process, and the collections of them were a fortieth of the start-up. ``server.cli`` turns it on
# again: for a command at once, for the server once it listens (see server.web.serving).
gc.disable()

from server.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
