"""The HTTP side of ``difflab serve``: Python's ThreadingHTTPServer, one self-contained page and a small JSON API.

GET  /                          the page (no external resources)
GET  /api/info                  the run: shape, conditioning, samplers, editing tasks, limits
POST /api/generate              {sampler, steps, seed, num, guidance_scale, label | prompt} -> 202 {id}
POST /api/edit                  {task, image, mask, strength, sampler, steps, seed} -> 202 {id}
GET  /api/jobs/ID?since=K       state, step, the x0 previews from the K-th on, and when done the grid
GET  /api/jobs/ID/image.png     the grid;  GET /api/jobs/ID/samples.npz: 'images' uint8 N x H x W x C
Every bad request gets a JSON {"error": "..."} with a 4xx status (503 when the job queue is full).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..errors import UserError
from .jobs import Busy, Service
from .page import PAGE

MAX_BODY = 4 << 20  # bytes of a request body (two small images as base64 JSON fit easily)


class Handler(BaseHTTPRequestHandler):
    """One request; ``self.server.service`` holds the run and the jobs."""

    server_version = "difflab-serve"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet unless asked)
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        parts = [p for p in url.path.split("/") if p]
        service: Service = self.server.service  # type: ignore[attr-defined]
        try:
            if not parts:
                return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            if parts == ["api", "info"]:
                return self._json(200, service.info())
            if len(parts) in (3, 4) and parts[:2] == ["api", "jobs"]:
                job = service.job(parts[2])
                if job is None:
                    return self._error(404, f"no job {parts[2]!r}")
                if len(parts) == 3:
                    since = parse_qs(url.query).get("since", ["0"])[0]
                    return self._json(200, job.view(int(since) if since.isdigit() else 0))
                if job.state != "done":
                    return self._error(409, f"job {job.id} is {job.state}, not done")
                if parts[3] == "image.png":
                    return self._send(200, job.png or b"", "image/png",
                                      {"Content-Disposition": f'attachment; filename="difflab-{job.id}.png"'})
                if parts[3] == "samples.npz":
                    return self._send(200, job.npz or b"", "application/octet-stream",
                                      {"Content-Disposition": f'attachment; filename="difflab-{job.id}.npz"'})
            return self._error(404, f"no such page {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            return None

    def do_POST(self) -> None:  # noqa: N802
        path = urlparse(self.path).path
        service: Service = self.server.service  # type: ignore[attr-defined]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            return self._error(413, f"request body larger than {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if path not in ("/api/generate", "/api/edit"):
            return self._error(404, f"no such endpoint {path}")
        try:
            req = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "the request body is not JSON")
        if not isinstance(req, dict):
            return self._error(400, "the request body must be a JSON object")
        try:
            job = service.generate(req) if path == "/api/generate" else service.edit(req)
        except UserError as e:
            return self._error(400, str(e))
        except Busy as e:
            return self._error(503, str(e))
        return self._json(202, {"id": job.id, "total": job.total})


class Server(ThreadingHTTPServer):
    """A threading HTTP server bound to one Service (each request on its own thread; sampling on the worker pool)."""

    daemon_threads = True

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False):
        self.service, self.verbose = service, verbose
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, notebooks); returns the thread."""
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="difflab-serve", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        """Stop serving, cancel the jobs and close the socket."""
        self.shutdown()
        self.service.close()
        self.server_close()


__all__ = ["Server", "Handler", "MAX_BODY"]
