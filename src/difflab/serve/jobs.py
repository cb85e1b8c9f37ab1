"""Sampling and editing jobs of ``difflab serve``: validated requests run on a small worker pool, with step previews."""
from __future__ import annotations

import base64
import io
import itertools
import math
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..models.protocol import DenoiserLike
from ..tasks.registry import TASKS

#: Request limits (a page on localhost, a CPU): beyond these a request is refused with HTTP 400.
MAX_STEPS = 1000
MAX_NUM = 64
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0
MAX_PROMPT = 200
EDIT_TASKS = tuple(t for t in TASKS if TASKS[t].page)  # the page's editing tasks
MAX_PREVIEWS = 100  # x0 previews kept per job (evenly spaced when a job has more steps)


class Busy(Exception):
    """The job queue is full (HTTP 503)."""


class Cancelled(Exception):
    """A job stopped by the server (shutdown)."""


def png_bytes(x: Tensor) -> bytes:
    """[N, C, H, W] in [-1, 1] -> PNG of the grid (small images upscaled as in ``difflab sample``)."""
    from PIL import Image

    from ..utils.images import image_grid

    h = x.shape[-1]
    g = image_grid(x.detach().float().cpu(), scale=max(1, 32 // h))
    buf = io.BytesIO()
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _decoded_bytes(value: Any, name: str, max_bytes: int) -> bytes:
    """The bytes of an image sent as a base64 data URL (``data:image/png;base64,...``) or as plain base64."""
    if not isinstance(value, str) or not value:
        raise UserError(f"{name}: expected an image (a PNG or JPEG data URL)")
    if value.startswith("data:"):
        if "," not in value:
            raise UserError(f"{name}: a data URL needs a comma before its base64 data")
        value = value.split(",", 1)[1]
    if len(value) > 2 * max_bytes:
        raise UserError(f"{name}: {len(value)} characters is larger than the {max_bytes} bytes allowed")
    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, TypeError):
        raise UserError(f"{name}: not base64 image data") from None
    if len(data) > max_bytes:
        raise UserError(f"{name}: {len(data)} bytes is larger than the {max_bytes} allowed")
    return data


def decode_image(value: Any, name: str, size: tuple[int, int], mode: str, max_bytes: int = 1 << 20) -> Tensor:
    """A PNG/JPEG sent as a data URL or base64 string -> [1, C, H, W] in [-1, 1]; UserError unless it is an image of ``size`` (H, W).

    The size is read from the file's header and checked before any pixel is decoded (no decompression bombs).
    """
    from PIL import Image, UnidentifiedImageError

    data = _decoded_bytes(value, name, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in ("PNG", "JPEG"):
                raise UserError(f"{name}: a {im.format} file; send a PNG or JPEG image")
            if (im.height, im.width) != tuple(size):
                raise UserError(f"{name} is {im.height}x{im.width} but this run takes {size[0]}x{size[1]} images "
                                "(height x width)")
            a = np.asarray(im.convert(mode), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise UserError(f"{name}: not a PNG or JPEG image") from None
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def _shown(v: Any) -> str:
    """A request value for an error message, shortened when long (a 5000-digit number stays one short line)."""
    text = repr(v) if not isinstance(v, int) or abs(v) < 10**40 else "an integer of more than 40 digits"
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _int(req: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """``req[key]`` as an integer in lo..hi (a JSON integer, an integral float or a decimal string), else UserError."""
    v = req.get(key, default)
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        n: int | None = int(v)
    elif isinstance(v, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,30}\s*", v):
        n = int(v)
    else:
        n = v if isinstance(v, int) and not isinstance(v, bool) else None
    if n is None:
        raise UserError(f"{key} must be an integer, got {_shown(v)}")
    if not lo <= n <= hi:
        raise UserError(f"{key} must lie in {lo}..{hi}, got {_shown(n)}")
    return n


def _float(req: Mapping[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    """``req[key]`` as a finite number in [lo, hi], else UserError (huge integers included, never OverflowError)."""
    v = req.get(key, default)
    try:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, str) and len(v) <= 60
        f = float(v) if ok else math.nan
    except (ValueError, OverflowError):
        f = math.nan
    if not math.isfinite(f) or not lo <= f <= hi:
        raise UserError(f"{key} must be a number in [{lo:g}, {hi:g}], got {_shown(v)}")
    return f


def _number(req: Mapping[str, Any], key: str) -> Any:
    """``req[key]`` for a task option (tasks/registry.py checks it): a decimal string read as a number, None if absent."""
    v = req.get(key)
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,30}\s*", v):
        return int(v)
    if isinstance(v, str) and len(v) <= 60:
        try:
            return float(v)
        except ValueError:
            return v
    return v


@dataclass
class Job:
    """One request's state, read by the polling endpoint."""

    id: str
    kind: str
    total: int
    state: str = "queued"  # queued, running, done, error
    step: int = 0
    previews: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None
    png: bytes | None = None
    npz: bytes | None = None
    started: float = 0.0
    finished: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, i: int, denoised: Tensor) -> None:
        """Record step i's x0 estimate (the sampler callback / model hook); stop if the job is cancelled."""
        if self.cancel.is_set():
            raise Cancelled()
        self.step = i + 1
        every = max(1, math.ceil(self.total / MAX_PREVIEWS))
        if i % every == 0 or i + 1 >= self.total:
            self.previews.append((i + 1, data_url(png_bytes(denoised.clamp(-1, 1)))))

    def view(self, since: int = 0) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "state": self.state, "step": self.step,
                               "total": self.total, "previews": [{"step": s, "image": u} for s, u in self.previews[since:]],
                               "n_previews": len(self.previews)}
        if self.error:
            out["error"] = self.error
        if self.state == "done":
            out.update(image=data_url(self.png or b""), png=f"/api/jobs/{self.id}/image.png",
                       npz=f"/api/jobs/{self.id}/samples.npz", seconds=round(self.finished - self.started, 3))
        return out


class _Watched(torch.nn.Module):
    """A denoiser that reports each call's x0 estimate to a job (edits: the tasks run the sampler themselves)."""

    def __init__(self, model: DenoiserLike, job: Job):
        super().__init__()
        self.model, self.job, self.schedule, self.calls = model, job, model.schedule, 0

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        d = self.model(x, t, cond)
        self.job.progress(min(self.calls, self.job.total - 1), d)
        self.calls += 1
        return d


class Service:
    """A loaded run, its request validation and a bounded pool of sampling workers (shared by the HTTP threads)."""

    def __init__(self, run: str | Path, workers: int = 2, max_queued: int = 8, device: str | None = "cpu"):
        from ..runs import DiffusionRun, load

        run = Path(run)
        opened = load(run, device=device)
        if not isinstance(opened, DiffusionRun):  # the page guides, edits and watches a denoiser
            raise UserError(f"--run {run}: serve needs a diffusion run ({opened.describe()})")
        self.run, self.opened = run, opened
        self.loaded = opened.loaded
        if len(self.loaded.shape) != 3:
            raise UserError(f"--run {run} models points of shape {list(self.loaded.shape)}; serve shows images")
        if workers < 1 or max_queued < 1:
            raise UserError("--workers and --max-queued must be at least 1")
        self.conditioning = self.loaded.conditioning
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="difflab-job")
        self.max_active = workers + max_queued
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self._ids = itertools.count(1)

    # ---- what the page needs to know ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from ..samplers import names

        c, h, w = self.loaded.shape
        kind = self.conditioning.kind
        tasks = [t for t in self.opened.tasks if t in TASKS and TASKS[t].page]
        scale = int(getattr(self.conditioning, "scale", 1))
        return {"run": str(self.run), "shape": [c, h, w], "conditioning": kind,
                "num_classes": int(getattr(self.loaded.model.net.config, "num_classes", 0)),
                "class_names": self.loaded.config.get("class_names"), "samplers": names(), "default_sampler": self.opened.default_sampler or "ddim",
                "default_steps": self.opened.default_steps,
                "tasks": tasks, "generate": "generate" in self.opened.tasks,
                "input_size": [h // scale, w // scale] if kind == "superres" else [h, w],
                "limits": {"steps": MAX_STEPS, "num": MAX_NUM, "guidance_scale": MAX_GUIDANCE}}

    # ---- validation (the CLI's rules) -------------------------------------------------------------------
    def _common(self, req: Mapping[str, Any]) -> tuple[str, int, int]:
        from ..samplers import names

        sampler = req.get("sampler", self.opened.default_sampler or "ddim")
        if sampler not in names():
            raise UserError(f"unknown sampler {_shown(sampler)}; choose one of {', '.join(names())}")
        steps = int(self.opened.default_steps or 50)
        return sampler, _int(req, "steps", steps, 1, MAX_STEPS), _int(req, "seed", 0, 0, MAX_SEED)

    def _guided(self, req: Mapping[str, Any]) -> tuple[Any, Callable[[int, torch.device], Any]]:
        from ..guidance.spec import GuidanceSpec, wrap

        label = req.get("label")
        label = None if label in (None, "") else _int(req, "label", 0, 0, 10**6)
        prompt = req.get("prompt") or None
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_PROMPT):
            raise UserError(f"prompt must be text of at most {MAX_PROMPT} characters")
        num_classes = int(getattr(self.loaded.model.net.config, "num_classes", 0))
        if label is not None and self.conditioning.kind == "labels" and not 0 <= label < num_classes:
            raise UserError(f"label {label}: this run has classes 0..{num_classes - 1}")
        if label is not None and self.conditioning.kind != "labels":
            raise UserError("label: this run is not class-conditional")
        spec = GuidanceSpec(label=label, prompt=prompt,
                            guidance_scale=_float(req, "guidance_scale", 0.0, 0.0, MAX_GUIDANCE))
        model, make_cond = wrap(spec, self.loaded, where=self.run)
        return self.opened.denoiser(model), make_cond

    # ---- jobs ----------------------------------------------------------------------------------------------
    def _submit(self, kind: str, total: int, work: Callable[[Job], Tensor]) -> Job:
        with self.lock:
            active = sum(j.state in ("queued", "running") for j in self.jobs.values())
            if active >= self.max_active:
                raise Busy(f"{active} jobs are queued or running; try again when one has finished")
            job = Job(f"{next(self._ids)}", kind, total)
            self.jobs[job.id] = job
            while len(self.jobs) > 64:  # forget the oldest finished jobs
                old = next((k for k, j in self.jobs.items() if j.state in ("done", "error")), None)
                if old is None:
                    break
                del self.jobs[old]
        self.pool.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[Job], Tensor]) -> None:
        from ..data import to_uint8

        job.state, job.started = "running", time.time()
        try:
            with torch.no_grad():
                x = work(job).float().cpu()
            buf = io.BytesIO()
            np.savez(buf, images=to_uint8(x))
            job.png, job.npz = png_bytes(x), buf.getvalue()
            job.state = "done"
        except Cancelled:
            job.state, job.error = "error", "cancelled: the server is shutting down"
        except (UserError, ValueError) as e:
            job.state, job.error = "error", str(e)
        except Exception as e:  # noqa: BLE001  (a worker must never die silently; the page shows one line)
            job.state, job.error = "error", f"internal error: {type(e).__name__}: {e}"
        finally:
            job.finished = time.time()

    def generate(self, req: Mapping[str, Any]) -> Job:
        """Validate a sampling request and queue it; UserError (HTTP 400) for a bad one."""
        from ..samplers import sample

        if not self.info()["generate"]:
            raise UserError(f"this run is a {self.conditioning.kind} run: use the editing panel with an input image")
        sampler, steps, seed = self._common(req)
        num = _int(req, "num", 16, 1, MAX_NUM)
        model, make_cond = self._guided(req)
        shape = self.loaded.shape

        def work(job: Job) -> Tensor:
            g = torch.Generator().manual_seed(seed)
            x_T = model.schedule.sample_prior((num, *shape), generator=g, device="cpu")
            cb = lambda d: job.progress(d["i"], d["denoised"])  # noqa: E731
            return sample(model, x_T, sampler=sampler, steps=steps, cond=make_cond(num, torch.device("cpu")),
                          generator=g, callback=cb)

        from ..samplers import n_levels

        return self._submit("generate", n_levels(sampler, steps), work)

    def edit(self, req: Mapping[str, Any]) -> Job:
        """Validate an editing request (the registry's page tasks: inpaint, sdedit, superres, colorize) and queue it."""
        from ..tasks.registry import Job as TaskJob

        name, info = req.get("task"), self.info()
        page = [t for t in TASKS if TASKS[t].page]
        if not isinstance(name, str) or name not in page:
            raise UserError(f"unknown task {_shown(name)}; choose one of {', '.join(page)}")
        if name not in info["tasks"]:
            raise UserError(f"task {name}: this run ({self.conditioning.kind} conditioning) supports "
                            + (", ".join(info["tasks"]) or "no editing task"))
        task = TASKS[name]
        sampler, steps, seed = self._common(req)
        values = task.values(lambda k: _number(req, k))
        c = self.loaded.shape[0]
        size = tuple(info["input_size"])
        image = decode_image(req.get("image"), "image", size, "L" if (task.gray_input or c == 1) else "RGB")
        mask = None
        if task.mask == "required" or (task.mask == "optional" and req.get("mask")):
            mask = (decode_image(req.get("mask"), "mask", size, "L")[0, 0] > 0).float()  # white (>= 128) = keep
            if task.mask == "required" and bool(mask.all()):
                raise UserError("mask: nothing to fill (paint the part to generate)")
        total = max(1, int(steps * values["strength"])) if "strength" in values else steps * values.get("resample", 1)
        if total > 10 * MAX_STEPS:
            raise UserError(f"steps x resample = {total} model-call blocks; the page runs at most {10 * MAX_STEPS}")
        model, cond, conditioning = self.opened.denoiser(), None, self.conditioning
        if conditioning.kind == "captions":  # a text run: the prompt, with guidance if asked, or the empty caption
            model, make_cond = self._guided(req) if req.get("prompt") else (model, conditioning.null)
            cond = make_cond(1, torch.device("cpu"))
        elif req.get("prompt"):
            raise UserError("prompt: this run is not text-conditional")

        def work(job: Job) -> Tensor:
            common = {"sampler": sampler, "steps": steps, "generator": torch.Generator().manual_seed(seed)}
            return task.run(TaskJob(_Watched(model, job), image, mask, conditioning, cond, values, common))

        return self._submit(task.name, total, work)

    def job(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def close(self) -> None:
        """Cancel every job and stop the workers."""
        with self.lock:
            for j in self.jobs.values():
                j.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["Service", "Job", "Busy", "Cancelled", "decode_image", "png_bytes", "MAX_STEPS", "MAX_NUM", "EDIT_TASKS"]
