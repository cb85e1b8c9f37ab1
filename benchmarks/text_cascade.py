"""An Imagen-style text cascade against a single-stage text model of the same minutes, on coloured MNIST.

    python benchmarks/text_cascade.py --data mnist:$DIFFLAB_MNIST --minutes 8 --write-docs
    python benchmarks/text_cascade.py --data mnist:DIR --minutes 0.1 --per-prompt 1 --out /tmp/tc   # a smoke run

The captioned folder of benchmarks/text_to_image.py (each digit painted in one of four colours on black, captions
"a red seven"). Two models get the same training minutes, trained at the same time with one thread each:
  single   a pixel text run at 28x28 (``difflab train --data FOLDER --text-encoder small``), all the minutes;
  cascade  a text base at 14x14 (``--data size:14:FOLDER``) for half the minutes, then a text-conditional SR3
           stage 14 -> 28 with noise-conditioning augmentation (``--task superres --noise-aug``) for the other
           half, assembled with ``difflab cascade``.
All three use the `ddpm` recipe (as SR stages do by default), the same U-Net overrides and caption dropout. For each guidance scale, every one of the 40 prompts
(4 colours x 10 digits) draws --per-prompt samples with DDIM; prompt accuracy (digit by the MNIST feature net on the
grey version, colour by the nearest palette colour of the mean foreground colour), FD of the grey samples against
the folder's images and seconds per sample. Writes docs/benchmarks/text_cascade.md and .json with --write-docs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_to_image import PALETTE, cli, colour_of, features_name, grey, write_folder  # noqa: E402

from difflab import data as datasets  # noqa: E402
from difflab.evaluation import evaluate_features, extract  # noqa: E402
from difflab.guidance import ClassifierFreeGuidance  # noqa: E402
from difflab.models.denoiser import Clamped  # noqa: E402
from difflab.text import DIGIT_NAMES  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
SCALES = (0.0, 2.0, 4.0)
NET = {"network": {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_levels": [1, 2],
                   "num_heads": 4, "dropout": 0.0}, "p_uncond": 0.15, "batch_size": 64, "sample_steps": 20}


def train(folder: Path, work: Path, minutes: float) -> dict[str, Path]:
    """The single-stage run and the cascade, trained at the same time (one thread each)."""
    (work / "net.json").write_text(json.dumps(NET))
    common = ["--channels", 3, "--threads", 1, "--quiet", "--text-encoder", "small", "--config", work / "net.json",
              "--recipe", "ddpm"]
    out = {"single": work / "single", "cascade": work / "cascade"}
    single = ["train", "--data", folder, "--image-size", 28, *common, "--minutes", minutes, "--out", out["single"]]
    chain = [["train", "--data", f"size:14:{folder}", "--image-size", 28, *common, "--minutes", minutes / 2,
              "--out", work / "base"],
             ["train", "--data", folder, "--image-size", 28, "--task", "superres", "--scale", 2, "--noise-aug", *common,
              "--minutes", minutes / 2, "--out", work / "sr"],
             ["cascade", "--base", work / "base", "--stage", work / "sr", "--out", out["cascade"]]]
    if (out["single"] / "checkpoint.safetensors").is_file() and (out["cascade"]).is_dir():
        return out
    proc = subprocess.Popen([sys.executable, "-m", "difflab", *map(str, single)])
    for args in chain:
        cli(*args)
    if proc.wait():
        sys.exit("error: the single-stage training failed")
    return out


def prompts() -> list[tuple[str, int, int]]:
    return [(f"a {c} {DIGIT_NAMES[d]}", d, k) for k, c in enumerate(PALETTE) for d in range(10)]


def open_model(kind: str, path: Path):
    """The cascade, or the single-stage run (loaded once; sampling time excludes loading)."""
    from difflab.training import load_run
    from difflab.training.cascade import load_cascade

    return load_cascade(path) if kind == "cascade" else load_run(path)


@torch.no_grad()
def draw(kind: str, model, prompt: str, n: int, w: float, steps: int, g: torch.Generator) -> torch.Tensor:
    from difflab.samplers import sample

    if kind == "cascade":
        return model.sample(n, sampler="ddim", steps=steps, generator=g, prompt=prompt, guidance_scale=w)
    guided = Clamped(ClassifierFreeGuidance(model.model, w))
    cond = model.conditioning.prompts([prompt] * n, "cpu")
    return sample(guided, guided.schedule.sample_prior((n, *model.shape), generator=g), sampler="ddim", steps=steps,
                  cond=cond, generator=g)


def measure(kind: str, path: Path, args: argparse.Namespace, reference) -> list[dict]:
    rows, model = [], open_model(kind, path)
    for w in SCALES:
        g = torch.Generator().manual_seed(args.seed)
        xs, digit, colour, t0 = [], [], [], time.perf_counter()
        for text, d, k in prompts():
            xs.append(draw(kind, model, text, args.per_prompt, w, args.steps, g))
            digit += [d] * args.per_prompt
            colour += [k] * args.per_prompt
        sec = (time.perf_counter() - t0) / (len(prompts()) * args.per_prompt)
        x = torch.cat(xs)
        feats = extract(grey(x), features_name(args.data))
        d_ok = torch.as_tensor(feats.logits).argmax(1) == torch.tensor(digit)
        c_ok = colour_of(x) == torch.tensor(colour)
        rows.append({"w": w, "digit": float(d_ok.float().mean()), "colour": float(c_ok.float().mean()),
                     "both": float((d_ok & c_ok).float().mean()), "fd": float(evaluate_features(feats, reference)["fd"]),
                     "s_per_sample": sec})
        print(kind, rows[-1], flush=True)
        if args.write_docs and rows[-1]["both"] >= max(r["both"] for r in rows):
            from difflab.utils.images import save_image_grid

            order = torch.arange(len(x)).view(len(prompts()), args.per_prompt)[:, 0]  # one sample per prompt
            save_image_grid(x[order], DOCS / f"text_cascade_{kind}.png", nrow=10)
    return rows


def report(res: dict, args: argparse.Namespace) -> str:
    lines = ["# A text cascade against a single-stage text model (coloured MNIST)", "",
             f"Command: `python benchmarks/text_cascade.py {' '.join(sys.argv[1:])}`  ",
             f"Date: {res['date']}; load (1/5/15 min) before: {res['load_before']}, after training: "
             f"{res['load_trained']}, at the end: {res['load_end']}; torch {torch.__version__}.", "",
             f"{args.num} captioned images (\"a <colour> <digit>\", {len(PALETTE)} colours); {args.minutes:g} minutes "
             f"per model, both trained at the same time with one thread each: the single-stage run at 28x28 all "
             f"of them, the cascade's 14x14 base and its 14 -> 28 SR stage (noise-conditioning augmentation) half "
             f"each; all with the `ddpm` recipe and the U-Net overrides `{NET['network']}`. Steps: single {res['steps']['single']}, base {res['steps']['base']}, SR {res['steps']['sr']}. "
             f"{args.per_prompt} samples for each of the 40 prompts per scale, DDIM {args.steps} per stage, sample "
             f"seed {args.seed} (drawn at run time); FD of the grey samples against 2000 of the folder's images in "
             "the MNIST feature net.", "",
             "| model | w | digit acc | colour acc | prompt acc | FD (grey) | s / sample |", "|---|---|---|---|---|---|---|"]
    for kind in ("single", "cascade"):
        for r in res[kind]:
            lines.append(f"| {kind} | {r['w']:g} | {r['digit']:.2f} | {r['colour']:.2f} | {r['both']:.2f} | "
                         f"{r['fd']:.2f} | {r['s_per_sample']:.4f} |")
    lines += ["", "One sample per prompt at the scale with the best prompt accuracy (row = colour, column = digit): "
              "![single](text_cascade_single.png) ![cascade](text_cascade_cascade.png)", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="grey labelled 28x28 digits: mnist:DIR")
    p.add_argument("--num", type=int, default=10000, help="images in the captioned folder")
    p.add_argument("--minutes", type=float, default=8.0, help="training minutes per model")
    p.add_argument("--per-prompt", type=int, default=10, help="samples per prompt and scale")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per stage")
    p.add_argument("--seed", type=int, help="sample seed (default: drawn at run time)")
    p.add_argument("--out", type=Path, default=Path("runs/text_cascade"))
    p.add_argument("--write-docs", action="store_true", help="write docs/benchmarks/text_cascade.md")
    args = p.parse_args()
    torch.set_num_threads(2)
    args.seed = int.from_bytes(os.urandom(4), "little") % 2**31 if args.seed is None else args.seed
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "folder"
    if not (folder / "metadata.jsonl").is_file():
        write_folder(args.data, folder, args.num)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    runs = train(folder, args.out, args.minutes)
    res["load_trained"] = [round(x, 2) for x in os.getloadavg()]
    import difflab

    res["steps"] = {k: difflab.load(args.out / k).step for k in ("single", "base", "sr")}
    ref = datasets.load(str(folder), "train", image_size=28, channels=3).x[:2000]
    reference = extract(grey(ref), features_name(args.data))
    for kind in ("single", "cascade"):
        res[kind] = measure(kind, runs[kind], args, reference)
    res["load_end"] = [round(x, 2) for x in os.getloadavg()]
    res["seed"] = args.seed
    (args.out / "text_cascade.json").write_text(json.dumps(res, indent=1))
    text = report(res, args)
    print(text)
    if args.write_docs:
        (DOCS / "text_cascade.md").write_text(text)
        (DOCS / "text_cascade.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
