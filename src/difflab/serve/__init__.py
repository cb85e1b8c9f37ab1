"""``difflab serve``: a local web page to sample and edit with a run (standard library HTTP server, no extras)."""
from .jobs import Service
from .server import Server

__all__ = ["Service", "Server"]
