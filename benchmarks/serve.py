"""difflab serve under load: HTTP latency idle and while long jobs sample, the cost of the step previews, and the
page's screenshot (docs/serve.png) taken by headless Chromium.

    python benchmarks/serve.py --run RUN [--out docs/benchmarks/serve.md] [--screenshot docs/serve.png]

The server runs in this process on port 0 with --workers 2, as `difflab serve` would; requests are plain HTTP.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import torch

from difflab.models.denoiser import Clamped
from difflab.samplers import sample
from difflab.serve import Server, Service


def get(url: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - t0) * 1000.0, body


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def wait(base: str, job: str) -> dict:
    while True:
        _, j = get(f"{base}api/jobs/{job}?since=100000")
        if j["state"] in ("done", "error"):
            return j
        time.sleep(0.05)


def latencies(base: str, paths: list[str], n: int) -> list[float]:
    out = []
    for i in range(n):
        out.append(get(base + paths[i % len(paths)])[0])
        time.sleep(0.02)
    return out


def summary(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} | {max(ms):.1f}"


def screenshot(base: str, path: Path) -> str:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "no screenshot: playwright is not installed"
    chromium = shutil.which("chromium")
    if chromium is None:
        return "no screenshot: no chromium binary"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        pg = b.new_page(viewport={"width": 1200, "height": 620})
        pg.goto(base)
        pg.wait_for_selector("body[data-ready='1']")
        pg.fill("#steps", "20")
        pg.fill("#num", "16")
        pg.fill("#seed", "3")
        pg.click("#generate")
        pg.wait_for_function("() => document.getElementById('status').textContent.includes('done')", timeout=120000)
        pg.click("#use-sample")
        pg.select_option("#task", "inpaint")
        box = pg.locator("#canvas").bounding_box()
        pg.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.55)
        pg.mouse.down()
        pg.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.75, steps=8)
        pg.mouse.up()
        pg.screenshot(path=str(path))
        b.close()
    return f"screenshot written to {path}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/serve.md"))
    ap.add_argument("--screenshot", type=Path, default=Path("docs/serve.png"))
    ap.add_argument("--requests", type=int, default=40)
    args = ap.parse_args()
    load = os.getloadavg()
    service = Service(args.run, workers=2, max_queued=8)
    srv = Server(service, "127.0.0.1", 0)
    srv.start()
    base = srv.url
    try:
        idle = latencies(base, ["api/info"], args.requests)
        # the cost of the previews: the same request through the page and straight through samplers.sample
        req = {"sampler": "ddim", "steps": 50, "num": 64, "seed": 0}
        model = Clamped(service.loaded.model)
        page_s, direct_s = [], []
        for _ in range(5):  # interleaved, so that a change in the machine's load hits both alike
            page_s.append(wait(base, post(base + "api/generate", req)["id"])["seconds"])
            g = torch.Generator().manual_seed(0)
            x_T = model.schedule.sample_prior((64, *service.loaded.shape), generator=g)
            t0 = time.perf_counter()
            sample(model, x_T, "ddim", steps=50, generator=g)
            direct_s.append(time.perf_counter() - t0)
        # two long jobs occupy both workers; the page keeps being answered
        long = [post(base + "api/generate", {"sampler": "ddim", "steps": 1000, "num": 64, "seed": s})["id"]
                for s in (1, 2)]
        time.sleep(0.5)
        busy = latencies(base, ["api/info", f"api/jobs/{long[0]}?since=100000"], args.requests)
        states = [get(f"{base}api/jobs/{j}?since=100000")[1]["state"] for j in long]
        small = post(base + "api/generate", {"sampler": "ddim", "steps": 10, "num": 4, "seed": 5})["id"]
        t0 = time.perf_counter()
        _, s = get(f"{base}api/jobs/{small}?since=100000")
        small_state = s["state"]
        for j in long:  # stop the long jobs, so that the screenshot's job does not queue behind them
            service.job(j).cancel.set()
        for j in long + [small]:
            wait(base, j)
        try:
            shot = screenshot(base, args.screenshot) if args.screenshot else "no screenshot asked"
        except Exception as e:  # noqa: BLE001  (the measurements above are kept)
            shot = f"no screenshot ({type(e).__name__}: {str(e).splitlines()[0]})"
    finally:
        srv.stop()
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py " + " ".join(sys.argv[1:])
    lines = [
        "# difflab serve: latency under load and the cost of the step previews",
        "",
        f"Command: `{cmd}` (run: `{args.run}`).",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start "
        "(the machine is shared with other work); torch threads "
        f"{torch.get_num_threads()}.",
        "",
        "The server runs in the benchmark's process with `--workers 2`; requests are plain HTTP from the same machine.",
        "",
        "| HTTP requests (GET /api/info, GET /api/jobs/ID) | median ms | max ms |",
        "|---|---|---|",
        f"| idle ({args.requests} requests) | {summary(idle)} |",
        f"| while two 1000-step, 64-sample jobs occupy both workers ({args.requests} requests; jobs {', '.join(states)}) "
        f"| {summary(busy)} |",
        "",
        f"A third, small job sent meanwhile is accepted at once (HTTP 202) and waits its turn (state `{small_state}`);"
        " the answers above are what the page needs to stay responsive.",
        "",
        "| 64 samples, ddim, 50 steps | seconds (median of 5, interleaved) |",
        "|---|---|",
        f"| through the page (x0 preview PNG at each step, job queue) | {statistics.median(page_s):.2f} |",
        f"| `samplers.sample` directly, no callback | {statistics.median(direct_s):.2f} |",
        f"| ratio | {statistics.median(page_s) / statistics.median(direct_s):.2f}x |",
        "",
        f"Screenshot: {shot}.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
