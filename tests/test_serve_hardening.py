"""difflab serve against hostile and careless clients, over real sockets on 127.0.0.1 (and ::1).

Each test starts its own server on port 0 in a thread and stops it; every socket has a timeout and every loop a
bound, so nothing here can hang.
"""
from __future__ import annotations

import http.client
import json
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import numpy as np
import pytest

from difflab.serve import Server, Service
from difflab.serve.app import check_origin
from difflab.serve.jobs import EDIT_TASKS, MAX_SEED

from test_serve import make_run, png_url, wait

TIMEOUT = 20  # seconds any socket operation of these tests may take


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(num_classes=0, host="127.0.0.1", workers=2, max_queued=8, **kw):
        run = make_run(tmp_path / f"run{len(servers)}", num_classes)
        service = Service(run, workers=workers, max_queued=max_queued)
        srv = Server(service, host, 0, **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def netloc(srv) -> str:
    return srv.url.split("//", 1)[1].rstrip("/")


def exchange(srv, data: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it (b'' if it answers nothing)."""
    with socket.create_connection(srv.server_address[:2], timeout=TIMEOUT) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def request(srv, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, JSON) of one request with exactly these headers (Host added unless given) over a fresh connection."""
    h = {"Host": netloc(srv), "Connection": "close", **(headers or {})}
    if body is not None and "Transfer-Encoding" not in h:
        h.setdefault("Content-Length", str(len(body)))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items() if v is not None) + "\r\n"
    status, headers_, payload = parse(exchange(srv, head.encode("latin-1") + (body or b"")))
    assert headers_.get("content-type", "").startswith("application/json"), (status, headers_, payload[:200])
    return status, json.loads(payload)


def post(srv, path: str, raw: bytes | str, **headers: str):
    raw = raw.encode() if isinstance(raw, str) else raw
    return request(srv, "POST", path, raw, {"Content-Type": "application/json", **headers})


# ---- values no validator expected --------------------------------------------------------------------------------
BIG = "1" + "0" * 400  # 10**400 as a JSON integer


@pytest.mark.parametrize("body,needle", [
    ('{"steps": ' + "7" * 5000 + "}", "too many digits"),
    ('{"steps": ' + BIG + "}", "steps must lie in 1..1000, got an integer of more than 40 digits"),
    ('{"num": ' + BIG + "}", "num must lie in 1..64"),
    ('{"seed": ' + BIG + "}", "seed must lie in"),
    ('{"guidance_scale": ' + BIG + "}", "guidance_scale must be a number"),
    ('{"label": ' + BIG + "}", "label must lie in"),
    ('{"seed": -' + BIG + "}", "seed must lie in"),
    ('{"steps": 1e400}', "steps must be an integer, got inf"),
    ('{"guidance_scale": 1e400}', "guidance_scale must be a number"),
    ('{"guidance_scale": NaN}', "NaN is not JSON"),
    ('{"steps": Infinity}', "Infinity is not JSON"),
    ('{"seed": ' + str(MAX_SEED + 1) + "}", "seed must lie in 0..9223372036854775807"),
    ('{"steps": "\u00b2"}', "steps must be an integer"),
    ('{"steps": "' + "9" * 5000 + '"}', "steps must be an integer"),
    ("[" * 100000, "nested too deeply"),
    ('{"a": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    (b"{\"a\": \"\xff\"}", "not UTF-8"),
    ("", None),  # an empty body is the empty request: defaults, accepted
])
def test_odd_values_get_a_json_400(server, body, needle):
    srv = server()
    status, r = post(srv, "/api/generate", body)
    if needle is None:
        assert status == 202 and r["id"] == "1"
        return
    assert status == 400 and needle in r["error"] and "\n" not in r["error"] and len(r["error"]) < 300
    assert srv.service.jobs == {}


@pytest.mark.parametrize("image,needle", [
    ("data:x", "a data URL needs a comma"), ("data:image/png;base64,", "not a PNG"),
    ("data:image/png;base64,@@@", "not base64"), (12, "expected an image"), (["data:,"], "expected an image"),
    ("A" * (3 << 20), "larger than"),
])
def test_bad_images_get_a_json_400(server, image, needle):
    srv = server()
    status, r = post(srv, "/api/edit", json.dumps({"task": "sdedit", "image": image}))
    assert status == 400 and needle in r["error"]


def png_chunks(width: int, height: int, idat: bytes) -> bytes:
    """A grayscale 8-bit PNG with this header and this (possibly broken) IDAT chunk."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_png_bomb_is_refused_from_its_header_before_decoding(server):
    import base64

    srv = server()
    bomb = png_chunks(4096, 4096, zlib.compress(b"\0" * (4097 * 4096), 9))  # 16 MPixel from ~16 KB
    broken = png_chunks(4096, 4096, b"not deflate data")  # decoding it would fail with "not a PNG"
    assert len(bomb) < 100_000
    for data in (bomb, broken):
        body = {"task": "inpaint", "image": "data:image/png;base64," + base64.b64encode(data).decode(),
                "mask": png_url(np.zeros((8, 8), np.uint8))}
        status, r = post(srv, "/api/edit", json.dumps(body))
        assert status == 400 and r["error"].startswith("image is 4096x4096 but this run takes 8x8")


def test_since_must_be_ascii_digits(server):
    srv = server()
    status, r = post(srv, "/api/generate", '{"steps": 2, "num": 1}')
    assert status == 202 and r["id"] == "1"
    for bad in ("%C2%B2", "-1", "1.5", "x", "1" * 12):
        status, r = request(srv, "GET", f"/api/jobs/1?since={bad}")
        assert status == 400 and "since must be a whole number" in r["error"]
    j = wait(srv, "1")
    status, r = request(srv, "GET", "/api/jobs/1?since=1")
    assert status == 200 and r["n_previews"] == 2 and [p["step"] for p in r["previews"]] == [2]
    assert j["state"] == "done"


def test_seed_at_the_documented_maximum_is_accepted(server):
    srv = server()
    status, r = post(srv, "/api/generate", json.dumps({"seed": MAX_SEED, "steps": 1, "num": 1}))
    assert status == 202 and MAX_SEED == 2**63 - 1
    assert wait(srv, r["id"])["state"] == "done"
    status, r = post(srv, "/api/generate", json.dumps({"seed": str(MAX_SEED), "steps": 1, "num": 1}))
    assert status == 202


# ---- who may ask -------------------------------------------------------------------------------------------------
def test_cross_origin_writes_are_refused(server):
    srv = server()
    evil = {"Origin": "http://evil.example"}
    status, r = request(srv, "POST", "/api/generate", b'{"steps": 2}', {"Content-Type": "text/plain", **evil})
    assert status == 403 and "cross-origin" in r["error"]
    status, r = post(srv, "/api/generate", '{"steps": 2}', **evil)
    assert status == 403
    status, r = post(srv, "/api/generate", '{"steps": 2}', Origin="null")
    assert status == 403
    status, r = post(srv, "/api/generate", '{"steps": 2}', Origin=f"http://127.0.0.1:{srv.server_address[1] + 1}")
    assert status == 403  # another port is another origin
    status, r = request(srv, "POST", "/api/generate", b'{"steps": 2}', {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in r["error"]  # what a cross-site form or no-cors fetch sends
    status, r = request(srv, "POST", "/api/generate", b'{"steps": 2}',
                        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert srv.service.jobs == {}  # nothing was queued
    status, r = post(srv, "/api/generate", '{"steps": 2, "num": 1}', Origin=srv.url.rstrip("/"))
    assert status == 202  # the page itself
    status, r = request(srv, "GET", "/api/info", headers=evil)
    assert status == 403


def test_dns_rebinding_is_refused_by_the_host_check(server):
    srv = server(allow_hosts=["difflab.box"])
    port = srv.server_address[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "[::2]", "", "a b", f"evil.example:{port}x"):
        for path in ("/api/info", "/api/jobs/1", "/"):
            status, r = request(srv, "GET", path, headers={"Host": host})
            assert status in (400, 403) and "error" in r, (host, path)
    status, r = request(srv, "GET", "/api/info", headers={"Host": None})  # no Host at all (HTTP/1.1 needs one)
    assert status >= 400
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}", "difflab.box", f"[::1]:{port}"):
        status, r = request(srv, "GET", "/api/info", headers={"Host": host})
        assert status == 200 and r["shape"] == [1, 8, 8], host


def test_check_origin_rules():
    allowed = {"127.0.0.1", "localhost"}
    assert check_origin({"host": "127.0.0.1:8000"}, allowed, "POST") is None
    assert check_origin({"host": "localhost:8000", "origin": "http://localhost:8000"}, allowed, "POST") is None
    assert "Host 'evil.example'" in check_origin({"host": "evil.example:8000"}, allowed, "GET")
    for origin in ("https://localhost:8000", "http://localhost:8000/x", "http://localhost:8001", "http://127.0.0.1:8000"):
        assert "cross-origin" in check_origin({"host": "localhost:8000", "origin": origin}, allowed, "GET")
    assert "cross-origin" in check_origin({"host": "localhost", "origin": "http://localhost:81"}, allowed, "GET")
    assert check_origin({"host": "localhost", "origin": "http://localhost"}, allowed, "GET") is None
    assert check_origin({"host": "anything:1"}, None, "GET") is None  # a wildcard address without --allow-host
    assert "malformed Host" in check_origin({"host": "x:99999999"}, None, "GET")


# ---- slow, partial, chunked, bursts -------------------------------------------------------------------------------
def closed_by_server(s: socket.socket, trickle: bytes = b"", bound: float = TIMEOUT) -> bool:
    """Whether the server closes ``s`` (EOF or reset) within ``bound`` seconds, sending ``trickle`` a byte at a time."""
    s.settimeout(0.05)
    t_end, i = time.monotonic() + bound, 0
    while time.monotonic() < t_end:
        try:
            if i < len(trickle):
                s.send(trickle[i:i + 1])
                i += 1
            if s.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def test_partial_and_slow_requests_time_out_and_do_not_block_others(server):
    srv = server(request_timeout=0.5)
    addr, host = srv.server_address[:2], netloc(srv)
    partial = [socket.create_connection(addr, timeout=TIMEOUT) for _ in range(150)]
    try:
        for i, s in enumerate(partial):
            s.sendall(f"GET /api/info HTTP/1.1\r\nHost: {host}\r\nX-Pad-{i}: ".encode())
        assert request(srv, "GET", "/api/info")[0] == 200  # answered while 150 requests hang
        silent = socket.create_connection(addr, timeout=TIMEOUT)  # says nothing at all
        body = socket.create_connection(addr, timeout=TIMEOUT)  # headers, then a part of the body
        body.sendall(f"POST /api/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n{\"steps\": 2".encode())
        slowloris = socket.create_connection(addr, timeout=TIMEOUT)
        trickle = f"GET /api/info HTTP/1.1\r\nHost: {host}\r\n".encode() + b"X-A: b\r\n" * 400
        assert closed_by_server(slowloris, trickle)  # a byte every ~50 ms still meets the deadline
        for s in partial + [silent, body, slowloris]:
            assert closed_by_server(s)
        assert srv.service.jobs == {}
    finally:
        for s in partial:
            s.close()
    assert request(srv, "GET", "/api/info")[0] == 200


def test_a_short_body_then_half_close_is_not_a_request(server):
    srv = server()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: {netloc(srv)}\r\nContent-Type: application/json\r\n"
            "Content-Length: 40\r\n\r\n").encode()
    assert exchange(srv, head + b'{"steps": 2, "num": 1}', half_close=True) == b""
    assert srv.service.jobs == {}
    status, r = post(srv, "/api/generate", '{"steps": 2, "num": 1}')  # the whole body is
    assert status == 202 and r["id"] == "1"


def test_chunked_bodies_are_one_request(server):
    srv = server()
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=TIMEOUT)
    try:
        parts = [b'{"steps"', b': 2, "num": 1', b', "seed": 4}']
        conn.request("POST", "/api/generate", body=iter(parts), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        assert r.status == 202 and json.loads(r.read())["id"] == "1"
        conn.request("GET", "/api/info")  # the same connection: the chunk bytes were not taken for a request
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["shape"] == [1, 8, 8]
    finally:
        conn.close()
    assert list(srv.service.jobs) == ["1"]
    j = wait(srv, "1")
    assert j["state"] == "done" and j["total"] == 2


def test_a_chunked_body_past_the_limit_is_refused(server):
    srv = server(max_body=1000)
    chunk = b'{"prompt": "' + b"x" * 1200 + b'"}'
    body = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
    status, r = request(srv, "POST", "/api/generate", body,
                        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert status == 413 and "larger than 1000 bytes" in r["error"]
    status, r = post(srv, "/api/generate", "{" + " " * 1000 + "}")
    assert status == 413


def test_a_burst_of_40_posts_gets_no_connection_reset(server):
    srv = server(workers=1, max_queued=2)
    n, barrier, answers, errors = 40, threading.Barrier(40), [], []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=TIMEOUT)
            answers.append(post(srv, "/api/generate", json.dumps({"steps": 1, "num": 1, "seed": i})))
        except Exception as e:  # noqa: BLE001  (collected and asserted below)
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=2 * TIMEOUT)
    assert errors == [] and len(answers) == n
    statuses = sorted(s for s, _ in answers)
    assert set(statuses) <= {202, 503} and statuses[0] == 202
    assert all(("id" in r) if s == 202 else "queued or running" in r["error"] for s, r in answers)


def test_ipv6_loopback_listens(server):
    try:
        srv = server(host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    assert srv.url.startswith("http://[::1]:")
    status, r = request(srv, "GET", "/api/info")
    assert status == 200 and r["shape"] == [1, 8, 8]
    status, r = request(srv, "GET", "/api/info", headers={"Host": "evil.example"})
    assert status == 403


def test_the_cli_serves_on_ipv6_loopback_and_stops_on_ctrl_c(tmp_path):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    cmd = [sys.executable, "-m", "difflab", "serve", "--run", str(make_run(tmp_path / "run")), "--port", "0",
           "--host", "::1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("serving ") and "http://[::1]:" in line, (line, proc.poll())
        url = line.split(" on ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=TIMEOUT) as r:
            assert json.loads(r.read())["shape"] == [1, 8, 8]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped" and "Traceback" not in err, (out, err)


# ---- the last resort ---------------------------------------------------------------------------------------------
def boom(*args, **kwargs):
    raise RuntimeError("boom\nTraceback-looking second line")


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_exceptions_are_one_line_500s(server, capfd, monkeypatch, debug):
    srv = server(debug=debug)
    monkeypatch.setattr(srv.service, "generate", boom)
    monkeypatch.setattr(srv.service, "info", boom)
    for method, path, body in (("POST", "/api/generate", b"{}"), ("GET", "/api/info", None)):
        status, r = request(srv, method, path, body, {"Content-Type": "application/json"})
        assert status == 500 and r["error"] == f"internal error on {method} {path}: RuntimeError: boom"
    monkeypatch.setattr(srv.service, "job", boom)
    status, r = request(srv, "GET", "/api/jobs/%0A%1B[31m%C3%A9")  # control characters stay out of the log line
    assert status == 500 and r["error"] == "internal error on GET /api/jobs/??[31m\\xe9: RuntimeError: boom"
    monkeypatch.undo()
    assert request(srv, "GET", "/api/info")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "difflab: error: internal error on POST /api/generate: RuntimeError: boom" in err
    assert ("Traceback (most recent call last)" in err) == debug
    assert ("second line" in err) == debug and "\x1b" not in err


def test_unknown_pages_and_methods_are_json(server):
    srv = server()
    status, r = request(srv, "GET", "/api/generate")
    assert status == 405 and "GET is not allowed on /api/generate" in r["error"]
    status, r = request(srv, "GET", "/api/jobs/1/other.bin")
    assert status == 404
    status, r = post(srv, "/api/nothing", "{}")
    assert status == 404 and "no such page /api/nothing" in r["error"]
    status, r = request(srv, "GET", "/api/info", headers={"X-Big": "x" * 20000})
    assert status == 431 and "headers larger than 16384 bytes" in r["error"]
    status, r = request(srv, "POST", "/api/generate", b"{}", {"Content-Type": "application/json",
                                                              "Content-Length": "2, 3"})
    assert status == 400 and r["error"].startswith("invalid HTTP request")


@pytest.mark.parametrize("argv,env,debug", [([], "", False), (["--debug"], "", True), ([], "1", True),
                                            ([], "0", False)])
def test_the_cli_passes_debug_and_allowed_hosts_to_the_server(tmp_path, monkeypatch, argv, env, debug):
    import difflab.serve
    from difflab.cli.main import main

    seen = {}

    class Fake:
        allowed_hosts = {"127.0.0.1"}
        url = "http://127.0.0.1:1/"

        def __init__(self, service, host, port, **kw):
            seen.update(kw, host=host)

        def serve_forever(self):
            pass

        def server_close(self):
            pass

    monkeypatch.setattr(difflab.serve, "Server", Fake)
    monkeypatch.setenv("DIFFLAB_DEBUG", env)
    run = make_run(tmp_path / "run")
    assert main(["serve", "--run", str(run), "--allow-host", "box", "--allow-host", "box.lan", *argv]) == 0
    assert seen["debug"] is debug and seen["allow_hosts"] == ["box", "box.lan"] and seen["host"] == "127.0.0.1"


# ---- a small fuzz of the request JSON ----------------------------------------------------------------------------
ODD = [None, True, False, 0, 1, 2, -1, MAX_SEED, MAX_SEED + 1, 10**400, 0.5, 2.0, 1e300, -0.0, float("inf"), "",
       "2", " 1 ", "x", "\u00b2", "1e3", "nan", [], [1], {}, {"a": [1]}, "data:x", "data:image/png;base64,", "%%%",
       "A" * 500]
FIELDS = {"sampler": ["ddim", "euler", "heun", "nope"], "steps": [1, 2, "2"], "seed": [0, 7, MAX_SEED],
          "num": [1, 2], "guidance_scale": [0, 1.5], "label": [0, 2, 5], "prompt": ["a seven"],
          "task": list(EDIT_TASKS) + ["paint"], "strength": [0, 0.3, 1], "jump": [1, 3], "resample": [1, 2]}


def fuzz_body(rng: random.Random, path: str, images: list[str]) -> bytes:
    """A random request: plausible fields, 0-2 of them odd; now and then a body that is not a JSON object."""
    if rng.random() < 0.05:
        junk = bytes(rng.randrange(256) for _ in range(8))
        return rng.choice([b"[]", b'"x"', b"1", b"null", b"{", b'{"steps": 2,}', junk])
    req: dict = {"steps": rng.choice([1, 2, "2"]), "num": rng.choice([1, 2])}
    if path == "/api/edit":
        req.update(task=rng.choice(FIELDS["task"]), image=rng.choice(images), mask=rng.choice(images))
    for key in rng.sample(sorted(FIELDS), 3):
        req[key] = rng.choice(FIELDS[key])
    for key in rng.sample(sorted(FIELDS) + ["image", "mask"], rng.randrange(3)):
        req[key] = rng.choice(ODD)
    return json.dumps(req).encode()


@pytest.mark.parametrize("num_classes", [0, 3])
def test_fuzzed_requests_get_json_answers_and_the_server_keeps_serving(server, num_classes):
    srv = server(num_classes=num_classes, workers=2, max_queued=60)
    rng = random.Random(1234 + num_classes)
    images = [png_url(np.zeros((8, 8), np.uint8)), png_url(np.full((8, 8), 255, np.uint8)),
              png_url(np.tril(np.full((8, 8), 255, np.uint8))), png_url(np.zeros((16, 16), np.uint8)),
              png_url(np.zeros((8, 8, 3), np.uint8))]
    accepted = []
    for i in range(80):
        path = rng.choice(["/api/generate", "/api/edit"])
        status, r = post(srv, path, fuzz_body(rng, path, images))
        assert status == 202 or 400 <= status < 500, (i, status, r)
        assert ("id" in r) if status == 202 else (isinstance(r["error"], str) and "\n" not in r["error"])
        if status == 202:
            accepted.append(r["id"])
    assert request(srv, "GET", "/api/info")[0] == 200
    assert len(accepted) >= 5  # a part of the fuzzed requests is valid and runs
    for job_id in accepted:
        j = wait(srv, job_id)
        assert j["state"] == "done" or not j["error"].startswith("internal error"), j["error"]
