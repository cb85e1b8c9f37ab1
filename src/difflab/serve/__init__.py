"""``difflab serve``: a local web page to sample and edit with a run (a Starlette application served by uvicorn)."""
from .jobs import Service
from .server import Server

__all__ = ["Service", "Server"]
