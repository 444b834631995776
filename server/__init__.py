"""mixauth: a self-hosted authentication service compatible with the Appmixer user API."""

__version__ = "0.1.0"
