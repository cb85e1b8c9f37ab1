"""difflab serve over plain HTTP: a server on port 0 in a thread, tiny untrained runs made in the test."""
from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from difflab import schedules
from difflab.errors import UserError
from difflab.models.denoiser import Denoiser
from difflab.models.networks import network_spec
from difflab.models.unet import UNet, UNetConfig
from difflab.serve import Server, Service
from difflab.training.checkpoint import save_checkpoint, write_json
from difflab.training.run import RUN_FORMAT


def make_run(path, num_classes=0, seed=0):
    """An untrained 8x8 one-channel run (random weights, so predictions depend on the input)."""
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                          groups=4, dropout=0.0, num_classes=num_classes, time_scale=10.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    sched = schedules.get("linear", T=100)
    save_checkpoint(path, {"model": Denoiser(net, sched, "eps")})
    write_json(path / "config.json", {
        "format": RUN_FORMAT, "family": "diffusion", "data": "digits", "data_kind": "image", "shape": [1, 8, 8],
        "class_names": [str(i) for i in range(num_classes)] if num_classes else None, "train": {},
        "network": network_spec(net), "schedule": sched.config(), "prediction": "eps", "denoiser": "plain"})
    return path


@pytest.fixture
def server(tmp_path):
    servers = []

    def start(num_classes=0, **kw):
        srv = Server(Service(make_run(tmp_path / f"run{len(servers)}", num_classes), **kw), "127.0.0.1", 0)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop()


def call(srv, path, body=None, raw=None):
    """(status, parsed JSON or bytes) of a GET (body None) or POST."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(srv.url.rstrip("/") + path, data=data,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, payload, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(payload) if "json" in ctype else payload)


def wait(srv, job_id, timeout=60):
    t0 = time.time()
    while time.time() - t0 < timeout:
        status, j = call(srv, f"/api/jobs/{job_id}")
        assert status == 200
        if j["state"] in ("done", "error"):
            return j
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def png_array(data_url_or_bytes):
    b = data_url_or_bytes if isinstance(data_url_or_bytes, bytes) else base64.b64decode(data_url_or_bytes.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(b)))


def png_url(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_page_and_info(server):
    srv = server()
    status, page = call(srv, "/")
    assert status == 200 and b"<canvas" in page
    assert b"http://" not in page and b"https://" not in page  # offline: nothing fetched from elsewhere
    status, info = call(srv, "/api/info")
    assert status == 200 and info["shape"] == [1, 8, 8] and "ddim" in info["samplers"]
    assert info["tasks"] == ["inpaint", "sdedit"] and info["conditioning"] == "none"
    assert srv.server_address[0] == "127.0.0.1"


def test_generate_previews_downloads_and_seeds(server):
    srv = server()
    status, r = call(srv, "/api/generate", {"sampler": "ddim", "steps": 4, "seed": 1, "num": 4})
    assert status == 202
    j = wait(srv, r["id"])
    assert j["state"] == "done" and j["step"] == j["total"] == 4
    assert [p["step"] for p in j["previews"]] == [1, 2, 3, 4]  # one x0 estimate per step
    grid = png_array(j["image"])
    assert grid.shape == ((2 * (8 + 1) + 1) * 4,) * 2  # 2 x 2 grid of 8x8 images, 1 px padding, upscaled 4x
    status, png = call(srv, j["png"])
    assert status == 200 and np.array_equal(png_array(png), grid)
    status, npz = call(srv, j["npz"])
    images = np.load(io.BytesIO(npz))["images"]
    assert images.shape == (4, 8, 8, 1) and images.dtype == np.uint8
    again = wait(srv, call(srv, "/api/generate", {"steps": 4, "seed": 1, "num": 4})[1]["id"])
    other = wait(srv, call(srv, "/api/generate", {"steps": 4, "seed": 2, "num": 4})[1]["id"])
    assert np.array_equal(png_array(again["image"]), grid)  # same seed, same samples
    assert not np.array_equal(png_array(other["image"]), grid)


@pytest.mark.parametrize("body,needle", [
    ({"steps": 0}, "steps must lie in 1..1000"), ({"steps": "many"}, "steps must be an integer"),
    ({"sampler": "nope"}, "unknown sampler 'nope'"), ({"num": 100000}, "num must lie in 1..64"),
    ({"seed": -1}, "seed must lie in"), ({"label": 3}, "not class-conditional"),
    ({"guidance_scale": 2.0}, "--guidance-scale needs --label"), ({"prompt": "a seven"}, "not text-conditional"),
    ({"guidance_scale": "inf"}, "guidance_scale must be a number")])
def test_bad_generate_requests_get_400_and_a_message(server, body, needle):
    srv = server()
    status, r = call(srv, "/api/generate", body)
    assert status == 400 and needle in r["error"]


def test_labels_and_guidance_on_a_class_conditional_run(server):
    srv = server(num_classes=3)
    assert call(srv, "/api/info")[1]["num_classes"] == 3
    status, r = call(srv, "/api/generate", {"label": 5})
    assert status == 400 and "classes 0..2" in r["error"]
    j = wait(srv, call(srv, "/api/generate", {"label": 1, "guidance_scale": 2.0, "steps": 3, "num": 2})[1]["id"])
    assert j["state"] == "done"


def test_http_errors(server):
    srv = server()
    assert call(srv, "/api/jobs/999")[0] == 404
    assert call(srv, "/nowhere")[0] == 404
    assert call(srv, "/api/nothing", {})[0] == 404
    status, r = call(srv, "/api/generate", raw=b"{not json")
    assert status == 400 and "not JSON" in r["error"]
    status, r = call(srv, "/api/generate", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in r["error"]
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/api/edit")
    conn.putheader("Content-Length", str(5 << 20))  # refused before any of the body is read
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "larger than" in json.loads(r.read())["error"]
    conn.close()


def test_edit_inpaint_keeps_the_known_pixels(server):
    srv = server()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.full((8, 8), 255, np.uint8)
    mask[2:6, 2:6] = 0  # generate the centre
    status, r = call(srv, "/api/edit", {"task": "inpaint", "image": png_url(image), "mask": png_url(mask), "steps": 3})
    assert status == 202
    j = wait(srv, r["id"])
    assert j["state"] == "done" and len(j["previews"]) >= 1
    out = np.load(io.BytesIO(call(srv, j["npz"])[1]))["images"][0, :, :, 0]
    keep = mask == 255
    assert np.array_equal(out[keep], image[keep])
    # SDEdit at strength 0 returns the guide exactly
    j = wait(srv, call(srv, "/api/edit", {"task": "sdedit", "image": png_url(image), "strength": 0})[1]["id"])
    assert np.array_equal(np.load(io.BytesIO(call(srv, j["npz"])[1]))["images"][0, :, :, 0], image)


@pytest.mark.parametrize("body,needle", [
    ({"task": "inpaint", "image": "data:image/png;base64," + base64.b64encode(b"not a png at all").decode()},
     "image: not a PNG or JPEG image"),
    ({"task": "inpaint", "image": "%%%"}, "not base64"),
    ({"task": "sdedit", "image": png_url(np.zeros((16, 16), np.uint8))}, "image is 16x16 but this run takes 8x8"),
    ({"task": "superres", "image": png_url(np.zeros((4, 4), np.uint8))}, "supports inpaint, sdedit"),
    ({"task": "paint"}, "unknown task 'paint'"),
    ({"task": "inpaint", "image": png_url(np.zeros((8, 8), np.uint8))}, "mask: expected an image"),
    ({"task": "inpaint", "image": png_url(np.zeros((8, 8), np.uint8)), "mask": png_url(np.full((8, 8), 255, np.uint8))},
     "nothing to fill"),
    ({"task": "sdedit", "image": png_url(np.zeros((8, 8), np.uint8)), "strength": 2}, "strength must lie in [0, 1]")])
def test_bad_edit_requests_get_400_and_a_message(server, body, needle):
    srv = server()
    status, r = call(srv, "/api/edit", body)
    assert status == 400 and needle in r["error"]


def test_a_held_job_does_not_block_other_requests_and_the_queue_is_capped(server, monkeypatch):
    """The first job is held inside its first step (an event, not the clock), so its state is known when asserted."""
    from difflab.serve.jobs import Job

    gate, entered, progress = threading.Event(), threading.Event(), Job.progress

    def held(self, i, denoised):
        entered.set()
        assert gate.wait(timeout=60), "the test never released the job"
        return progress(self, i, denoised)

    monkeypatch.setattr(Job, "progress", held)
    srv = server(workers=1, max_queued=1)
    try:
        status, first = call(srv, "/api/generate", {"steps": 3, "num": 2})
        assert status == 202 and entered.wait(timeout=60)
        status, second = call(srv, "/api/generate", {"steps": 3, "num": 2})
        assert status == 202
        status, r = call(srv, "/api/generate", {"steps": 2})
        assert status == 503 and "queued or running" in r["error"]
        status, info = call(srv, "/api/info")  # answered while the only worker is busy
        assert status == 200 and info["shape"] == [1, 8, 8]
        states = [call(srv, f"/api/jobs/{j['id']}")[1]["state"] for j in (first, second)]
        assert states == ["running", "queued"]
        assert call(srv, f"/api/jobs/{first['id']}/image.png")[0] == 409  # not done yet
    finally:
        gate.set()
    assert [wait(srv, j["id"])["state"] for j in (first, second)] == ["done", "done"]
    assert call(srv, f"/api/jobs/{first['id']}/image.png")[0] == 200


def test_service_refuses_runs_it_cannot_show(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Service(tmp_path / "missing")


def test_cli_errors_are_one_line(tmp_path, capsys):
    from difflab.cli.main import main

    assert main(["serve", "--run", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--run", str(make_run(tmp_path / "run")), "--port", "70000"]) == 2
    assert main(["serve", "--run", str(tmp_path / "run"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("difflab: error: ") for line in err)
    assert "does not exist" in err[0] and "--port must lie in 0..65535" in err[1] and "--workers" in err[2]
