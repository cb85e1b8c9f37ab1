"""The HTTP side of ``difflab serve`` as a Starlette (ASGI) application: one self-contained page and a small JSON API.

GET  /                          the page (no external resources)
GET  /api/info                  the run: shape, conditioning, samplers, editing tasks, limits
POST /api/generate              {sampler, steps, seed, num, guidance_scale, label | prompt} -> 202 {id}
POST /api/edit                  {task, image, mask, strength, sampler, steps, seed} -> 202 {id}
GET  /api/jobs/ID?since=K       state, step, the x0 previews from the K-th on, and when done the grid
GET  /api/jobs/ID/image.png     the grid;  GET /api/jobs/ID/samples.npz: 'images' uint8 N x H x W x C

Every answer of the API is JSON; a bad request gets {"error": "..."} with a 4xx status (503 when the job queue is
full), an unexpected failure 500 with one line. Requests whose Host is not an address of this server (DNS
rebinding) or whose Origin is another site (cross-site requests) are refused with 403.
"""
from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Collection
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import UserError
from .jobs import Busy, Service
from .page import PAGE

MAX_BODY = 4 << 20  # bytes of a request body (two small images as base64 JSON fit easily)
MAX_HEADERS = 16 << 10  # bytes of a request's header names and values
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Referrer-Policy": "no-referrer", "Content-Security-Policy": "frame-ancestors 'none'"}


class Refused(Exception):
    """A request answered with ``status`` and a one-line JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={**HEADERS, **(headers or {})})


def _not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404/405 as JSON."""
    status = getattr(exc, "status_code", 500)
    path = request.url.path
    return error(status, f"no such page {path}" if status == 404 else f"{request.method} is not allowed on {path}")


# ---- the endpoints ----------------------------------------------------------------------------------------------
def page(request: Request) -> Response:
    return Response(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)


def info(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.service.info(), headers=HEADERS)


def job_view(request: Request) -> JSONResponse:
    job = request.app.state.service.job(request.path_params["id"])
    if job is None:
        raise Refused(404, f"no job {request.path_params['id']!r}")
    since = request.query_params.get("since", "0")
    if not re.fullmatch(r"[0-9]{1,9}", since):
        raise Refused(400, f"since must be a whole number of previews (0..999999999), got {since[:20]!r}")
    return JSONResponse(job.view(int(since)), headers=HEADERS)


def job_file(request: Request) -> Response:
    job_id, name = request.path_params["id"], request.path_params["name"]
    job = request.app.state.service.job(job_id)
    if job is None:
        raise Refused(404, f"no job {job_id!r}")
    if name not in ("image.png", "samples.npz"):
        raise Refused(404, f"no such page {request.url.path}")
    if job.state != "done":
        raise Refused(409, f"job {job.id} is {job.state}, not done")
    body, ctype = (job.png, "image/png") if name == "image.png" else (job.npz, "application/octet-stream")
    disposition = f'attachment; filename="difflab-{job.id}.{name.rsplit(".", 1)[1]}"'
    return Response(body or b"", media_type=ctype, headers={**HEADERS, "Content-Disposition": disposition})


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The whole body (Content-Length or chunked), refused with 413 past ``limit`` bytes and 415 unless it is JSON."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isascii() or not length.isdigit() or int(length) > limit):
        raise Refused(413, f"request body larger than {limit} bytes")
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise Refused(415, f"send the request body as application/json (got {ctype[:40] or 'no Content-Type'!r})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; Refused(400) for bad JSON, NaN, 5000-digit numbers, 100000 brackets."""
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        req = json.loads(body or b"{}", parse_constant=no_constants)
    except json.JSONDecodeError as e:
        raise Refused(400, f"the request body is not JSON ({e.msg} at character {e.pos})") from None
    except UnicodeDecodeError:
        raise Refused(400, "the request body is not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise Refused(400, "the request body is not JSON this server reads (nested too deeply)") from None
    except ValueError as e:
        reason = "a number with too many digits" if "digits" in str(e) else str(e)
        raise Refused(400, f"the request body is not JSON this server reads ({reason})") from None
    if not isinstance(req, dict):
        raise Refused(400, "the request body must be a JSON object")
    return req


def _queue(service: Service, kind: str, body: bytes) -> JSONResponse:
    """Validate and queue one job (runs on a worker thread: JSON parsing and image decoding are not free)."""
    req = parse_request(body)
    try:
        job = service.generate(req) if kind == "generate" else service.edit(req)
    except UserError as e:
        raise Refused(400, str(e)) from None
    except Busy as e:
        raise Refused(503, str(e)) from None
    return JSONResponse({"id": job.id, "total": job.total}, 202, headers=HEADERS)


async def submit(request: Request) -> Response:
    try:
        body = await read_body(request, request.app.state.max_body)
    except ClientDisconnect:  # the client went away before sending the whole body: nothing is queued
        return Response(status_code=400)
    kind = request.url.path.rsplit("/", 1)[1]
    return await run_in_threadpool(_queue, request.app.state.service, kind, body)


def _refused(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status if isinstance(exc, Refused) else 400
    return error(status, str(exc), {"Connection": "close"} if status == 413 else None)


def printable(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, non-ASCII escaped, control characters as '?' (safe in a log line)."""
    text = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else "?" for c in text)


def internal_line(scope: Scope, exc: BaseException) -> str:
    """One printable line naming the request and an unexpected exception."""
    text = (str(exc).splitlines() or [""])[0]
    where = f"{scope['method']} {printable(scope['path'], 80)}"
    return f"internal error on {where}: {type(exc).__name__}: {printable(text)}"


def _internal(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's 500 as one line of JSON (the Guard then logs it)."""
    return error(500, internal_line(request.scope, exc))


# ---- who may ask: Host and Origin checks, and the last-resort handler --------------------------------------------
def _host_port(value: str, default_port: int | None = None) -> tuple[str, int | None] | None:
    """('name', port) of a Host header or an Origin's netloc (IPv6 in brackets), None when it does not parse."""
    try:
        parts = urlsplit("//" + value)
        return (parts.hostname or "").lower(), parts.port or default_port
    except ValueError:
        return None


def check_origin(headers: dict[str, str], allowed_hosts: Collection[str] | None, method: str) -> str | None:
    """Why a request is refused (None when it may go on): its Host names another server, or its Origin another site.

    A browser always sends Host; after DNS rebinding it holds the attacker's name, so only this server's own
    names are answered. A cross-origin request from a page carries that page's Origin, which must be this server.
    """
    host = headers.get("host")
    parsed = _host_port(host) if host else None
    if parsed is None or not parsed[0]:
        return f"a missing or malformed Host header ({(host or '')[:60]!r})"
    if allowed_hosts is not None and parsed[0] not in allowed_hosts:
        return (f"Host {parsed[0][:60]!r} is not a name of this server (allowed: {', '.join(sorted(allowed_hosts))}; "
                "difflab serve --allow-host NAME adds one)")
    origin = headers.get("origin")
    if origin is not None:
        scheme, _, rest = origin.partition("://")
        theirs = _host_port(rest, 80) if scheme == "http" and "/" not in rest else None
        if theirs is None or theirs != (parsed[0], parsed[1] or 80):
            return f"a cross-origin request (Origin {origin[:60]!r}; this page is served as http://{host[:60]})"
    elif method not in ("GET", "HEAD") and headers.get("sec-fetch-site") == "cross-site":
        return "a cross-site request"
    return None


class Guard:
    """Outermost layer: refuses foreign Host/Origin (403), turns any unexpected exception into a one-line 500 JSON.

    The traceback goes to stderr only when ``debug`` is set (``difflab serve --debug`` or DIFFLAB_DEBUG=1).
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Collection[str] | None, debug: bool = False, verbose: bool = False):
        self.app, self.allowed_hosts, self.debug, self.verbose = app, allowed_hosts, debug, verbose

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            why = check_origin(headers, self.allowed_hosts, scope["method"])
            if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADERS:
                await error(431, f"request headers larger than {MAX_HEADERS} bytes")(scope, receive, sending)
            elif why is not None:
                await error(403, f"refused: {why}")(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        except Exception as e:  # noqa: BLE001  (the last resort: one line to the client and to stderr)
            line = internal_line(scope, e)
            print(f"difflab: error: {line}", file=sys.stderr, flush=True)
            if self.debug:
                traceback.print_exc(file=sys.stderr)
            if not status:
                await error(500, line)(scope, receive, sending)
        if self.verbose:
            print(f"{(scope.get('client') or ('-',))[0]} {scope['method']} {printable(scope['path'])} "
                  f"{status[0] if status else '-'}", file=sys.stderr, flush=True)


def build_app(service: Service, allowed_hosts: Collection[str] | None, debug: bool = False,
              verbose: bool = False, max_body: int = MAX_BODY) -> ASGIApp:
    """The page and the API around ``service``, behind the Guard."""
    routes = [Route("/", page), Route("/api/info", info), Route("/api/jobs/{id}", job_view),
              Route("/api/jobs/{id}/{name}", job_file),
              Route("/api/generate", submit, methods=["POST"]), Route("/api/edit", submit, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={
        Refused: _refused, HTTPException: _not_allowed, Exception: _internal})
    app.state.service, app.state.max_body = service, max_body
    return Guard(app, None if allowed_hosts is None else {h.lower() for h in allowed_hosts}, debug, verbose)


__all__ = ["build_app", "check_origin", "parse_request", "Guard", "Refused", "MAX_BODY"]
