"""Image-to-image benchmark on held-out digits: inpainting (RePaint vs replacement) and SDEdit's faithfulness/realism curve.

    python benchmarks/tasks.py --run runs/digits --threads 1          # trains runs/digits first if it is missing

Inpainting: the test split with centre, half and random masks; error on the masked pixels (RMSE in [-1, 1]
units against the true image) and FD of the completed images against the training split (shipped digits
feature net), for plain replacement (r = 1) and RePaint (r, j) with the same sampler and grid.  SDEdit: guides
are the test digits coarsened to 4x4 blocks; L2 to the guide and FD over strength.  Writes
docs/benchmarks/tasks.md (tables, command, date, load), tasks.json and PNG figures of inputs and outputs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from difflab import data as datasets
from difflab import tasks
from difflab.evaluation import evaluate_features, extract, reference_images
from difflab.models.denoiser import Clamped
from difflab.training import load_run
from difflab.utils.images import image_grid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def masks(h: int, w: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """1 = keep: a centre square of half the side removed, the right half removed, half the pixels removed at random."""
    centre = torch.ones(h, w)
    centre[h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 0
    half = torch.ones(h, w)
    half[:, w // 2:] = 0
    g = torch.Generator().manual_seed(seed)
    rand = (torch.rand(n, 1, h, w, generator=g) >= 0.5).float()
    return {"centre": centre, "half": half, "random": rand}


def fd(x: torch.Tensor, ref) -> float:
    return float(evaluate_features(extract(x, "digits"), ref)["fd"])


def save_png(rows: list[torch.Tensor], path: Path, n: int = 12) -> None:
    from PIL import Image

    x = torch.cat([r[:n] for r in rows])
    g = image_grid(x, nrow=n, scale=4)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB over images with peak-to-peak 2 (data in [-1, 1])."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004, eq. 13): Gaussian window std 1.5 (11 taps, fewer on images under 11 pixels: radius
    (side - 1) // 2), 'valid' positions, K1 = 0.01, K2 = 0.03, L = 2 (data in [-1, 1]); channels averaged."""
    a, b = a.double(), b.double()
    r = min(5, (min(a.shape[-2:]) - 1) // 2)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / 1.5) ** 2)
    w = (k[:, None] * k[None]) / k.sum() ** 2
    C = a.shape[1]
    w = w[None, None].expand(C, 1, -1, -1)

    def f(x):
        return torch.nn.functional.conv2d(x, w, groups=C)

    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(m.mean())


class FeatureRef:
    """Reference Gaussian statistics of real images in a shipped feature net's space, for FD (Heusel et al. 2017);
    ``per_channel``: the net's features of each channel concatenated (colour images through a grayscale net)."""

    def __init__(self, x: torch.Tensor, features: str, per_channel: bool = False):
        from difflab.evaluation.metrics import gaussian_stats

        self.features, self.per_channel = features, per_channel
        self.mu, self.cov = gaussian_stats(self.feats(x))

    def feats(self, x: torch.Tensor) -> np.ndarray:
        x = x.clamp(-1, 1)
        if not self.per_channel:
            return np.asarray(extract(x, self.features).features)
        return np.concatenate([np.asarray(extract(x[:, i:i + 1], self.features).features) for i in range(x.shape[1])], 1)

    def fd(self, x: torch.Tensor) -> float:
        from difflab.evaluation.metrics import frechet_distance_gaussians, gaussian_stats

        mu, cov = gaussian_stats(self.feats(x))
        return float(frechet_distance_gaussians(mu, cov, self.mu, self.cov))


def _stage_data(rc: dict):
    """The training data of a run (its spec, at its size and channels)."""
    c, h, w = rc["shape"]
    return datasets.load(rc["data"], "train", image_size=h, channels=c)


def train_regression(like: Path, out: Path, minutes: float | None, threads: int) -> dict:
    """A regression U-Net of the SR run ``like``'s network (the same config, the same conditioning input) trained
    with MSE from the bicubic upsampling to the high-res image, for the run's wall-clock minutes, batch and lr
    (the SR3 paper's regression baseline, Saharia et al. 2021, sec. 4.3); EMA weights saved to OUT."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from difflab.models.networks import build_network
    from difflab.training.conditioning import conditioning_of_run, downsampled, upsampled
    from difflab.training.ema import EMA

    torch.set_num_threads(threads)
    rc = json.loads((like / "config.json").read_text())
    cond = conditioning_of_run(rc)
    if cond.kind != "superres" or cond.augment:
        raise SystemExit(f"{like}: the regression baseline copies a --task superres run without --noise-aug")
    tr = rc["train"]
    minutes = float(minutes if minutes is not None else tr["minutes"])
    data = _stage_data(rc)
    torch.manual_seed(0)
    net = build_network(rc["network"]["kind"], rc["network"]["config"])
    net.train()
    ema = EMA(net, float(tr.get("ema_decay", 0.999)))
    opt = torch.optim.Adam(net.parameters(), lr=float(tr["lr"]))
    g = torch.Generator().manual_seed(0)
    bs, warm = int(tr["batch_size"]), int(tr.get("warmup_steps", 0))
    t0, step, losses = time.time(), 0, []
    bar = tqdm(desc="regression", unit="step")
    while time.time() - t0 < 60 * minutes:
        idx = torch.randint(len(data), (bs,), generator=g)
        x = data.batch(idx)
        up = upsampled(downsampled(x, cond.scale), cond.scale)
        for group in opt.param_groups:
            group["lr"] = float(tr["lr"]) * min(1.0, (step + 1) / max(warm, 1))
        pred = net(torch.zeros_like(x), torch.zeros(bs), {"image": up})
        loss = ((pred - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), float(tr.get("grad_clip", 1.0)))
        opt.step()
        ema.update(net, step)
        step += 1
        losses.append(float(loss))
        bar.update()
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.model.state_dict().items()}, str(out / "regression.safetensors"))
    info = {"like": str(like), "network": rc["network"], "steps": step, "seconds": time.time() - t0,
            "minutes": minutes, "last_loss": float(np.mean(losses[-25:])), "scale": cond.scale}
    (out / "regression.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info), flush=True)
    return info


def load_regression(path: Path):
    """The EMA regression U-Net saved by :func:`train_regression` and its info."""
    from safetensors.torch import load_file

    from difflab.models.networks import build_network

    info = json.loads((path / "regression.json").read_text())
    net = build_network(info["network"]["kind"], info["network"]["config"])
    net.load_state_dict(load_file(str(path / "regression.safetensors")))
    return net.eval().requires_grad_(False), info


def superres_section(sr_run: Path, regression: Path | None, x: torch.Tensor, ref: FeatureRef, samplers_: list[str],
                     steps: int, figure: Path) -> dict:
    """SR3 against bicubic upsampling and a regression U-Net of the same size and minutes on held-out images x:
    FD, PSNR, SSIM and the RMSE of the output averaged back to the input's size."""
    from difflab.training.conditioning import downsampled, upsampled

    sr = load_run(sr_run, device="cpu")
    scale = sr.conditioning.scale
    low = downsampled(x, scale)

    def scores(y: torch.Tensor) -> dict:
        y = y.clamp(-1, 1)
        return {"fd": ref.fd(y), "psnr": psnr(y, x), "ssim": ssim(y, x),
                "lowres_rmse": float((downsampled(y, scale) - low).pow(2).mean().sqrt())}

    bicubic = upsampled(low, scale).clamp(-1, 1)
    out: dict = {"run": str(sr_run), "run_step": sr.step, "run_minutes": sr.config["train"].get("minutes"),
                 "scale": scale, "sizes": [list(low.shape[-2:]), list(x.shape[-2:])], "num": len(x),
                 "fd_real": ref.fd(x), "methods": {"bicubic": scores(bicubic)}}
    rows = [torch.nn.functional.interpolate(low, scale_factor=scale), bicubic]
    if regression is not None:
        net, info = load_regression(regression)
        with torch.no_grad():
            y = net(torch.zeros_like(x), torch.zeros(len(x)), {"image": upsampled(low, scale)})
        out["methods"]["regression"] = {**scores(y), "train_steps": info["steps"], "train_minutes": info["minutes"]}
        rows.append(y.clamp(-1, 1))
    for sampler in samplers_:
        t0 = time.time()
        y = tasks.superres(Clamped(sr.model), low, sr.conditioning, sampler=sampler, steps=steps,
                           generator=torch.Generator().manual_seed(1))
        out["methods"][f"sr3_{sampler}"] = {**scores(y), "seconds": time.time() - t0}
        print("superres", sr_run, sampler, out["methods"][f"sr3_{sampler}"], flush=True)
        rows.append(y)
    rows.append(x)
    save_png(rows, figure)
    return out


def cascade_section(base: Path, aug: list[Path], plain: list[Path], ref: FeatureRef, n: int, sampler: str,
                    steps: int, levels: list[float], work: Path, figure: Path) -> dict:
    """The cascade (base then SR stages) with noise-conditioning augmentation (stages trained with --noise-aug,
    sampled at each level of ``levels``; 0.2 the default) and without (stages trained without): FD of n samples."""
    from difflab.training.cascade import assemble, load_cascade

    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"base": str(base), "aug_stages": [str(p) for p in aug], "plain_stages": [str(p) for p in plain],
                 "num": n, "sampler": sampler, "steps": steps, "results": {}}
    rows = []
    for name, stages in (("with_aug", aug), ("without_aug", plain)):
        folder = work / name
        if folder.exists():
            shutil.rmtree(folder)
        assemble(base, stages, folder)
        c = load_cascade(folder, device="cpu")
        out.setdefault("steps_trained", {})[name] = [c.base.step, *(s.step for s in c.stages)]
        out["sizes"] = [list(s[1:]) for s in c.sizes()]
        for level in (levels if name == "with_aug" else [0.0]):
            t0 = time.time()
            xs = c.sample(n, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(1),
                          levels=[level] * len(stages), intermediates=True)
            key = f"{name}_level{level:g}"
            out["results"][key] = {"fd": ref.fd(xs[-1]), "seconds": time.time() - t0, "level": level}
            print("cascade", key, out["results"][key], flush=True)
            if level in (0.0, 0.2):
                H = xs[-1].shape[-1]
                rows += [torch.nn.functional.interpolate(v, size=(H, H)) for v in xs]
    save_png(rows, figure)
    return out


def colorize_section(run: Path, spec: str, n: int, sampler: str, steps: int, figure: Path) -> dict:
    """A colorization run on held-out colour images: RMSE to the true colours (RGB, [-1, 1] units) and FD of the
    shipped feature net's features of R, G and B concatenated (digits net on color:digits, MNIST net against 10000
    training images on color:mnist), against the grayscale input copied to RGB."""
    from difflab.training.conditioning import grayscale

    loaded = load_run(run, device="cpu")
    test = datasets.load(spec, "test")
    x = test.batch(torch.arange(min(n, len(test))))
    gray = grayscale(x)
    feat = "digits" if spec == "color:digits" else "mnist"
    ref = FeatureRef(reference_images(spec, "train", max_n=10000), feat, per_channel=True)

    def scores(y: torch.Tensor) -> dict:
        y = y.clamp(-1, 1)
        return {"color_rmse": float((y - x).pow(2).mean().sqrt()), "fd_rgb": ref.fd(y),
                "luma_rmse": float((grayscale(y) - gray).pow(2).mean().sqrt())}

    out: dict = {"run": str(run), "run_step": loaded.step, "num": len(x), "data": spec, "features": feat, "methods": {}}
    out["methods"]["gray_as_rgb"] = scores(gray.expand(-1, 3, -1, -1))
    out["methods"]["real"] = scores(x)
    rows = [gray.expand(-1, 3, -1, -1)]
    for s in ([sampler] if sampler == "ddim" else [sampler, "ddim"]):
        t0 = time.time()
        y = tasks.colorize(Clamped(loaded.model), gray, loaded.conditioning, sampler=s, steps=steps,
                           generator=torch.Generator().manual_seed(1))
        out["methods"][f"colorize_{s}"] = {**scores(y), "seconds": time.time() - t0}
        print("colorize", s, out["methods"][f"colorize_{s}"], flush=True)
        rows.append(y)
    rows.append(x)
    save_png(rows, figure)
    return out


def _meta_line(m: dict) -> list[str]:
    return [f"Command: `{m['command']}`  ", f"Date: {m['date']}; {m['machine']}; load: `{m['uptime']}`", ""]


def write_md(r: dict, path: Path) -> None:
    """docs/benchmarks/tasks.md from the results (each section with the command, date and load that measured it)."""
    L = ["# Image-to-image tasks on digits and MNIST", "",
         "FD: Frechet distance in the shipped feature nets' space (digits net for 8x8 digits, MNIST net for 28x28 "
         "MNIST) against the training split; real held-out images give the floor at the same n. Every section lists "
         "the command, date and machine load that measured it. Sections: inpainting and SDEdit; super-resolution "
         "(bicubic, regression U-Net, SR3); the cascade with and without noise-conditioning augmentation; "
         "colorization.", ""]
    targets = []
    for name, ri in r.get("inpaint_sets", {}).items():
        suffix, title = ("", "digits test split") if name == "digits" else ("_mnist", "MNIST test images")
        blocks = ("2x2" if name == "digits" else f"{ri.get('pool', 4)}x{ri.get('pool', 4)}")
        L += [f"## Inpainting ({name}: held-out {title})", ""] + _meta_line(ri)
        L += [f"Unconditional run `{ri['run']}`: {ri['run_step']} training steps; sampler {ri['sampler']}, "
              f"{ri['steps']} steps per pass; mask-conditioned run (`--task inpaint`): "
              f"{ri.get('palette_run_step', '?')} steps. Real held-out images score FD {ri['fd_test_split']:.2f} on "
              f"the same {ri.get('num', 300)} images.", "",
              "Masked RMSE: error on the generated pixels against the true image ([-1, 1] units). FD of the completed "
              "images (known pixels included).", "",
              "| mask | method | masked RMSE | FD | seconds |", "|---|---|---|---|---|"]
        for mname, by in ri["inpaint"].items():
            for meth, v in by.items():
                L.append(f"| {mname} | {meth} | {v['masked_rmse']:.3f} | {v['fd']:.2f} | {v['seconds']:.0f} |")
        L += ["", "Rows of each figure: masked input (holes grey), truth, then one row per method in the table's "
              "order.", ""]
        L += [f"![{name} {m}](tasks_inpaint{suffix}_{m}.png)" for m in ri["inpaint"]]
        L += ["", f"## SDEdit: faithfulness vs realism ({name})", "",
              f"Guides: the held-out images averaged over {blocks}-pixel blocks (blocky strokes). L2: per-image "
              "distance to the guide. DDIM, the same steps.", "", "| strength | L2 to guide | FD |", "|---|---|---|"]
        for s_, v in ri["sdedit"].items():
            L.append(f"| {s_} | {v['l2_to_guide']:.2f} | {v['fd']:.2f} |")
        L += ["", "Rows: guide, then strength 0, 0.2, ..., 1.", "", f"![sdedit {name}](tasks_sdedit{suffix}.png)", ""]
        rp = [k for k in next(iter(ri["inpaint"].values())) if k.startswith("repaint")][0]
        met = all(by[rp]["fd"] < by["replacement"]["fd"] for by in ri["inpaint"].values())
        targets.append(f"- RePaint beats plain replacement on the FD of completed images ({name}): "
                       f"**{'met' if met else 'not met'}** (every mask: "
                       + ", ".join(f"{m} {by[rp]['fd']:.2f} vs {by['replacement']['fd']:.2f}"
                                   for m, by in ri["inpaint"].items()) + ").")
    if "superres_all" in r:
        sa = r["superres_all"]
        L += ["## Super-resolution x2 (digits 4x4 -> 8x8, MNIST 14x14 -> 28x28)", ""]
        L += ["Held-out test images, downsampled by block means. Regression: a U-Net with the SR run's network "
              "config and conditioning input, trained with MSE from the bicubic input to the image for the SR run's "
              "minutes, batch and learning rate (EMA weights). SSIM: Gaussian window std 1.5 (7 taps on 8x8, 11 on "
              "28x28), valid positions. Last column: RMSE of the output averaged back to the input size.", ""]
        for name, sr in sa["runs"].items():
            h0, h1 = sr["sizes"]
            reg = sr["methods"].get("regression", {})
            L += [f"### {name} {h0[0]}x{h0[1]} -> {h1[0]}x{h1[1]}", "",
                  *_meta_line(sr.get("meta", sa["meta"])),
                  f"SR run `{sr['run']}`: {sr['run_step']} steps in {sr['run_minutes']} minutes"
                  + (f"; regression U-Net: {reg['train_steps']} steps in {reg['train_minutes']} minutes" if reg else "")
                  + f". {sr['num']} held-out images; real images score FD {sr['fd_real']:.2f}.", "",
                  "| method | FD | PSNR (dB) | SSIM | RMSE back at low-res |", "|---|---|---|---|---|"]
            for k, v in sr["methods"].items():
                L.append(f"| {k} | {v['fd']:.2f} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['lowres_rmse']:.3f} |")
            L += ["", "Rows: input (nearest), bicubic, " + ("regression, " if reg else "")
                  + ", ".join(k[4:] for k in sr["methods"] if k.startswith("sr3_")) + " (SR3), truth.", "",
                  f"![superres {name}](tasks_superres_{name}.png)", ""]
            best = min(v["fd"] for k, v in sr["methods"].items() if k.startswith("sr3_"))
            ratio = sr["methods"]["bicubic"]["fd"] / best
            targets.append(f"- SR beats bicubic on FD by at least 2x ({name}): **{'met' if ratio >= 2 else 'not met'}** "
                           f"({ratio:.1f}x: {best:.2f} vs {sr['methods']['bicubic']['fd']:.2f}"
                           + (f"; regression {reg['fd']:.2f}" if reg else "") + ").")
    if "cascade" in r:
        ca = r["cascade"]
        L += ["## Cascade with and without noise-conditioning augmentation", ""]
        L += ["Each cascade samples its base model, then each SR stage conditioned on the previous stage's output. "
              "With augmentation: SR stages trained with `--noise-aug` (blur std 0.5 s low-res pixels, then "
              "cos/sin noise at level s ~ U(0, 1), s given to the network), sampled at a fixed level s for every "
              "stage (0.2 chosen beforehand, Ho et al. 2022; the other levels a sweep). Without: the same "
              "stages trained without augmentation, the same base, the same seeds.", ""]
        for name, c in ca["cascades"].items():
            sizes = " -> ".join(f"{a}x{b}" for a, b in c["sizes"])
            L += [f"### {name}: {sizes}", "", *_meta_line(c.get("meta", ca["meta"])),
                  f"{c['num']} samples, {c['sampler']} {c['steps']} steps per stage; training steps (base, stages): "
                  f"with augmentation {c['steps_trained']['with_aug']}, without {c['steps_trained']['without_aug']}. "
                  f"Real held-out images score FD {c['fd_real']:.2f}.", "",
                  "| cascade | level at sampling | FD | seconds |", "|---|---|---|---|"]
            for k, v in c["results"].items():
                L.append(f"| {k.split('_level')[0].replace('_', ' ')} | {v['level']:g} | {v['fd']:.2f} | {v['seconds']:.0f} |")
            L += ["", "Rows: with augmentation at level 0 (base, each stage), at level 0.2, then without augmentation; "
                  "smaller stages shown enlarged (nearest).", "", f"![cascade {name}](tasks_cascade_{name}.png)", ""]
            aug = c["results"].get("with_aug_level0.2", {}).get("fd")
            plain = c["results"]["without_aug_level0"]["fd"]
            if aug is not None:
                targets.append(f"- The cascade with augmentation beats it without ({name}, level 0.2): "
                               f"**{'met' if aug < plain else 'not met'}** (FD {aug:.2f} vs {plain:.2f}).")
    for name, co in r.get("colorize_sets", {}).items():
        spec = co.get("data", "color:digits")
        suffix = "" if name == "digits" else "_mnist"
        net = "digits" if name == "digits" else "MNIST"
        L += [f"## Colorization ({spec.split(':')[0]}:{name} held-out test split)", ""] + _meta_line(co["meta"])
        L += [f"Run `{co['run']}` (`--task colorize` on color:{name}): {co['run_step']} steps; {co['num']} held-out "
              f"images. Colour RMSE: RGB error against the true colours ([-1, 1] units); FD (RGB): the {net} net's "
              "features of R, G and B concatenated (so the joint colours count), against the training split"
              + ("" if name == "digits" else " (10000 images)") + "; luma RMSE: how far the output's "
              "grayscale is from the input. The data's foreground and background colours are drawn at random per "
              "image, so the gray input determines them only up to its luma.", "",
              "| method | colour RMSE | FD (RGB) | luma RMSE |", "|---|---|---|---|"]
        for k, v in co["methods"].items():
            L.append(f"| {k} | {v['color_rmse']:.3f} | {v['fd_rgb']:.2f} | {v['luma_rmse']:.3f} |")
        L += ["", "Rows: input (gray), colorized with each sampler, truth.", "",
              f"![colorize {name}](tasks_colorize{suffix}.png)", ""]
    if "cascade" in r:
        L += ["## Reading the cascade figures", "", CASCADE_NOTE, ""]
    L += ["## Targets", "", "RePaint's FD is that of the completed images, whose known pixels equal the input: "
          "it differs between methods only through the masked region.", "", *targets, ""]
    L += ["## Runs", "", RUNS_NOTE, ""]
    path.write_text("\n".join(L) + "\n")


CASCADE_NOTE = (
    "Equal minutes did not give equal steps: in the first digits cascade the augmented 4 -> 8 stage made 359 "
    "steps in its 2.5 minutes against the plain stage's 518 (the machine's load changed between them), and it "
    "loses (FD 7.66 vs 5.86). Retrained to the same 518 steps it wins at every level 0-0.5 (4.37-5.38 against "
    "5.86), with the blur (4.48 at 0.2) or without it (noise only, 4.42 at 0.2). On MNIST 7 -> 14 -> 28 "
    "(step counts about equal, 1227 / 380 against 1282 / 408) the augmented cascade loses at every level (81 at 0.2, "
    "the best of the sweep, against 52): with about 400 steps at 28x28 the stages are far from converged, and "
    "the augmented task (recover the image from a blurred, noised input) is the harder one to learn in that "
    "budget (its figure shows grey backgrounds and a few blobs from the augmented 28x28 stage, and the augmented 7 -> 14 stage at level 0.2 sometimes changes the digit the base drew). "
    "Trained longer (`mnist_longer`: the same stages resumed on an idle machine to about 3200 steps at 14x14 and "
    "1400 at 28x28, step counts again about equal) the order flips: with augmentation FD 21.7 at level 0.2 against "
    "37.9 without, and every sampled level 0-0.5 (21.7-29.9) beats the plain cascade; the earlier MNIST loss was "
    "the short training's, not the augmentation's. In every augmented cascade level 0 is worse than 0.1-0.3: the "
    "stages do use the level to discount their input's defects.")


RUNS_NOTE = "\n".join([
    "Inpainting/SDEdit runs: `difflab train --data digits --threads 1` with a 16-channel U-Net config "
    "(channel_mult [1, 2], 2 res blocks, attention at 4x4, dropout 0.1, batch 128, lr 2e-3): the unconditional "
    "run for 8 + 4 minutes (resumed), the mask-conditioned run (`--task inpaint`) for 6 minutes. The "
    "mask-conditioned model is trained on boxes, strokes and halves, so the random-pixel mask is outside its "
    "training masks.", "",
    "Super-resolution, cascade and colorization runs (2026-12-02, 02:00-03:20 UTC, one benchmark slot each, one "
    "thread, the machine shared with other jobs at load 2-15, so equal minutes did not give equal steps):",
    "",
    "- Low-res training folders: the block means of the digits / MNIST training images written as PNGs "
    "(digits 4x4, MNIST 7x7 and 14x14).",
    "- Digits (config D: the 16-channel U-Net above, batch 128, lr 2e-3): base `--data DIGITS4/ --image-size 4` "
    "3 minutes; SR stages `--data digits --task superres --scale 2` with `--noise-aug` and without, 2.5 minutes "
    "each; the regression U-Net 2.5 minutes (`benchmarks/tasks.py --train-regression OUT --like SR_RUN`); "
    "`--data color:digits --task colorize` 2.5 minutes. The equal-steps cascades: the augmented stage retrained "
    "with `--steps 518` (the plain stage's count), with the default blur and with `--aug-blur 0` (noise only).",
    "- MNIST (config M: 16 channels, channel_mult [1, 2], 1 res block, no attention, batch 64, lr 2e-3): base "
    "`--data MNIST7/ --image-size 7` with config D for 5 minutes; 7 -> 14 stages `--data MNIST14/ --image-size 14 "
    "--task superres --scale 2` 2.5 minutes each; 14 -> 28 stages `--data mnist:/work/shared/data/mnist --task "
    "superres --scale 2` 3 minutes each; the regression U-Net 3 minutes. Far fewer minutes than the digits "
    "runs per pixel: these MNIST models are undertrained (about 400 steps at 28x28).",
    "- The longer MNIST cascade (`mnist_longer`, 2026-12-02 05:27-05:46 UTC, idle machine, one thread per job, two "
    "jobs): copies of the four MNIST stages above resumed (`difflab train --out STAGE --resume --minutes M`), "
    "7 -> 14 stages 3 more minutes each (to 3195 / 3179 steps), 14 -> 28 stages 6 more minutes each (to 1383 / "
    "1445 steps); the same base.", "",
    "MNIST inpainting, SDEdit and colorization runs (2026-12-02 04:50-05:27 UTC, idle machine, one thread per job, "
    "two jobs): config R (32 channels, channel_mult [1, 2], 1 res block, attention at 14x14, batch 64, lr 2e-3; "
    "the image recipe of the trilemma benchmark): the unconditional run `--data mnist:DIR` 20 minutes (1045 "
    "steps), the mask-conditioned run `--task inpaint` 8 minutes (422 steps), `--data color:mnist:DIR --task "
    "colorize` 8 minutes (420 steps). All three are short of converged (real held-out MNIST: FD 18.9 at n = 200, "
    "22.9 in the RGB features at n = 300); the mask-conditioned run had 0.4x the unconditional run's steps, "
    "which is part of why RePaint on the unconditional model beats it here.",
])


def meta(args: argparse.Namespace) -> dict:
    """Command, date, machine and load of this invocation (stored with each section it measures)."""
    return {"command": " ".join(["python", "benchmarks/tasks.py", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)"}


def inpaint_sdedit(args: argparse.Namespace, results: dict, spec: str = "digits",
                   ref_for=None) -> None:
    """The inpainting (replacement, RePaint, mask-conditioned) and SDEdit sections on held-out images of ``spec``
    (digits: the whole test split and the digits net; MNIST: the first --num test images and the MNIST net against
    10000 training images)."""
    name = "digits" if spec == "digits" else "mnist"
    suffix = "" if name == "digits" else "_mnist"
    if not (args.run / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "difflab", "train", "--data", spec, "--out", str(args.run),
                        "--minutes", str(args.train_minutes), "--threads", str(args.threads), "--quiet",
                        "--recipe", "ddpm"], check=True)
    loaded = load_run(args.run, device="cpu")
    model = Clamped(loaded.model)
    if name == "digits":
        test = datasets.load("digits", "test")
        x = test.batch(torch.arange(min(args.num, len(test))))
        train = datasets.load("digits", "train")
        dref = extract(train.batch(torch.arange(len(train))), "digits")

        def fd_(y):
            return fd(y, dref)
    else:
        fref, xt = ref_for(spec)
        x = xt[:args.num]
        fd_ = fref.fd
    n, (c, h, w) = len(x), x.shape[1:]
    res: dict = {"inpaint": {}, "sdedit": {}, "fd_test_split": fd_(x)}
    methods = {"replacement": dict(resample=1), f"repaint_r{args.resample}_j{args.jump}":
               dict(resample=args.resample, jump=args.jump)}
    palette = None
    if args.palette_run is not None:
        if not (args.palette_run / "config.json").is_file():
            subprocess.run([sys.executable, "-m", "difflab", "train", "--data", spec, "--task", "inpaint", "--out",
                            str(args.palette_run), "--minutes", str(args.palette_minutes), "--threads",
                            str(args.threads), "--quiet"], check=True)
        palette = load_run(args.palette_run, device="cpu")
        res["palette_run_step"] = palette.step
    for mname, m in masks(h, w, n).items():
        m = m.expand(n, 1, h, w) if m.ndim == 2 else m
        rows = [x * m + (1 - m) * 0.0, x]
        for meth, opts in methods.items():
            t0 = time.time()
            out = tasks.inpaint(model, x, m, sampler=args.sampler, steps=args.steps,
                                generator=torch.Generator().manual_seed(0), **opts)
            miss = 1 - m
            rmse = float((((out - x) ** 2) * miss).sum() / (miss.sum() * c)) ** 0.5
            res["inpaint"].setdefault(mname, {})[meth] = {"masked_rmse": rmse, "fd": fd_(out),
                                                           "seconds": time.time() - t0}
            rows.append(out)
            print(name, mname, meth, res["inpaint"][mname][meth], flush=True)
        if palette is not None:
            t0 = time.time()
            out = tasks.inpaint_conditioned(Clamped(palette.model), x, m, palette.conditioning, sampler=args.sampler,
                                            steps=args.steps, generator=torch.Generator().manual_seed(0))
            miss = 1 - m
            rmse = float((((out - x) ** 2) * miss).sum() / (miss.sum() * c)) ** 0.5
            res["inpaint"][mname]["mask_conditioned"] = {"masked_rmse": rmse, "fd": fd_(out),
                                                         "seconds": time.time() - t0}
            rows.append(out)
            print(name, mname, "mask_conditioned", res["inpaint"][mname]["mask_conditioned"], flush=True)
        save_png(rows, args.out / f"tasks_inpaint{suffix}_{mname}.png")
    pool = 2 if h <= 8 else 4  # blocky strokes: 2x2-pixel blocks on 8x8 digits, 4x4-pixel blocks on 28x28 MNIST
    coarse = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, pool), scale_factor=pool, mode="nearest")
    strip = [coarse]
    for s in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        t0 = time.time()
        out = tasks.sdedit(model, coarse, s, sampler="ddim", steps=args.steps, generator=torch.Generator().manual_seed(0))
        l2 = float(((out - coarse) ** 2).flatten(1).sum(1).sqrt().mean())
        res["sdedit"][f"{s:.1f}"] = {"l2_to_guide": l2, "fd": fd_(out), "seconds": time.time() - t0}
        strip.append(out)
        print(name, "sdedit", s, res["sdedit"][f"{s:.1f}"], flush=True)
    save_png(strip, args.out / f"tasks_sdedit{suffix}.png")
    res.update(meta(args), run=str(args.run), run_step=loaded.step, sampler=args.sampler, steps=args.steps, num=n,
               pool=pool, size=[h, w])
    results.setdefault("inpaint_sets", {})[name] = res


def migrate(r: dict) -> dict:
    """Results of the earlier digits-only layout (inpaint/SDEdit and colorize at the top level) moved under their
    data set's name."""
    if "inpaint" in r and "inpaint_sets" not in r:
        keys = ["inpaint", "sdedit", "fd_test_split", "palette_run_step", "command", "date", "uptime", "machine",
                "run", "run_step", "sampler", "steps", "num"]
        r["inpaint_sets"] = {"digits": {k: r.pop(k) for k in keys if k in r}}
    if "colorize" in r and "colorize_sets" not in r:
        r["colorize_sets"] = {"digits": r.pop("colorize")}
    return r


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="inpaint", help="comma-separated: inpaint (with SDEdit), superres, cascade, "
                   "colorize; results of other sections are kept from OUT/tasks.json")
    p.add_argument("--run", type=Path, default=Path("runs/digits"))
    p.add_argument("--train-minutes", type=float, default=5.0)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resample", type=int, default=5)
    p.add_argument("--jump", type=int, default=5)
    p.add_argument("--num", type=int, default=300, help="held-out images (default: the whole digits test split, 300)")
    p.add_argument("--palette-run", type=Path, help="a --task inpaint digits run, compared on the same masks (trained if missing)")
    p.add_argument("--palette-minutes", type=float, default=5.0)
    p.add_argument("--sr-run", type=Path, action="append", default=[],
                   help="superres: a --task superres run (digits or MNIST); repeat for more")
    p.add_argument("--regression", type=Path, action="append", default=[],
                   help="superres: the regression baseline folder of each --sr-run (from --train-regression)")
    p.add_argument("--train-regression", type=Path, metavar="OUT",
                   help="train the regression U-Net copying --like's network, data and minutes into OUT, then stop")
    p.add_argument("--like", type=Path, help="with --train-regression: the SR run to copy")
    p.add_argument("--minutes", type=float, help="with --train-regression: minutes (default: the SR run's)")
    p.add_argument("--cascade", action="append", default=[], metavar="NAME:BASE:AUG1[,AUG2]:PLAIN1[,PLAIN2]",
                   help="cascade: a named cascade: base run, SR stages trained with --noise-aug, stages trained without")
    p.add_argument("--levels", default="0,0.1,0.2,0.3,0.5", help="cascade: augmentation levels sampled (default 0.2 "
                   "fixed a priori, Ho et al. 2022's low level; the others shown as a sweep)")
    p.add_argument("--cascade-num", type=int, default=500)
    p.add_argument("--color-run", type=Path, help="colorize: a --task colorize run on color:digits")
    p.add_argument("--mnist", default="mnist:/work/shared/data/mnist")
    p.add_argument("--data", choices=["digits", "mnist"], default="digits",
                   help="inpaint and colorize: held-out digits or MNIST (--mnist; color:MNIST for colorize)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DOCS)
    p.add_argument("--markdown-only", action="store_true", help="rewrite tasks.md from OUT/tasks.json")
    args = p.parse_args()
    if args.train_regression is not None:
        train_regression(args.like, args.train_regression, args.minutes, args.threads)
        return 0
    path = args.out / "tasks.json"
    results = migrate(json.loads(path.read_text()) if path.is_file() else {})
    if args.markdown_only:
        write_md(results, args.out / "tasks.md")
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sections = args.sections.split(",")
    unknown = set(sections) - {"inpaint", "superres", "cascade", "colorize"}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    refs: dict[str, tuple[FeatureRef, torch.Tensor]] = {}

    def ref_for(spec: str) -> tuple[FeatureRef, torch.Tensor]:
        """(train-split reference, held-out test images) of digits or MNIST."""
        if spec not in refs:
            feat = "digits" if spec == "digits" else "mnist"
            test = datasets.load(spec, "test")
            refs[spec] = (FeatureRef(reference_images(spec, "train", max_n=10000), feat),
                          test.batch(torch.arange(min(args.cascade_num, len(test)))))
        return refs[spec]

    if "inpaint" in sections:
        inpaint_sdedit(args, results, "digits" if args.data == "digits" else args.mnist, ref_for)
    if "superres" in sections:
        results.setdefault("superres_all", {"runs": {}})["meta"] = meta(args)  # the other data set's run is kept
        for i, run in enumerate(args.sr_run):
            rc = json.loads((run / "config.json").read_text())
            spec = "digits" if rc["data"] == "digits" else args.mnist
            ref, x = ref_for(spec)
            x = x[:args.num] if spec == "digits" else x
            name = "digits" if spec == "digits" else "mnist"
            reg = args.regression[i] if i < len(args.regression) else None
            results["superres_all"]["runs"][name] = superres_section(
                run, reg, x, ref, ["ddim", "ddpm", "dpmpp_2m"] if name == "digits" else ["ddpm", "ddim"], args.steps,
                args.out / f"tasks_superres_{name}.png")
            results["superres_all"]["runs"][name]["meta"] = meta(args)
        results.pop("superres", None)  # the earlier single-run section, superseded
    if "cascade" in sections:
        results.setdefault("cascade", {"cascades": {}})["meta"] = meta(args)  # other named cascades are kept
        levels = [float(v) for v in args.levels.split(",")]
        for spec_ in args.cascade:
            name, base, aug, plain = spec_.split(":")
            ref, _ = ref_for("digits" if name.startswith("digits") else args.mnist)
            results["cascade"]["cascades"][name] = cascade_section(
                Path(base), [Path(a) for a in aug.split(",")], [Path(a) for a in plain.split(",")], ref,
                args.cascade_num if not name.startswith("digits") else min(args.cascade_num, 300), args.sampler,
                args.steps, levels, Path("/tmp") / "difflab_tasks_cascades" / name, args.out / f"tasks_cascade_{name}.png")
            results["cascade"]["cascades"][name]["fd_real"] = ref.fd(ref_for("digits" if name.startswith("digits") else args.mnist)[1])
            results["cascade"]["cascades"][name]["meta"] = meta(args)
    if "colorize" in sections:
        spec = "color:digits" if args.data == "digits" else f"color:{args.mnist}"
        figure = args.out / ("tasks_colorize.png" if args.data == "digits" else "tasks_colorize_mnist.png")
        results.setdefault("colorize_sets", {})[args.data] = {
            "meta": meta(args), **colorize_section(args.color_run, spec, args.num, args.sampler, args.steps, figure)}
    path.write_text(json.dumps(results, indent=1))
    write_md(results, args.out / "tasks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
