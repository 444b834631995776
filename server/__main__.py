"""``python -m server``: serve the API, or run an admin command (see ``server.cli``)."""

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
