"""The default recipe on a 32x32 RGB image folder (not MNIST's 28x28 grey): coloured MNIST digits, padded to 32x32,
each with a seeded bright foreground and dark background colour, written as PNG files and read back as an image
folder. The default recipe (flow matching, the patch-2 U-Net, batch 32) against the former default (`--recipe
ddpm`: the DDPM recipe with the data's default U-Net and batch 128), both trained the same minutes at the same
time, one thread each. (The diffusers loop is compared on MNIST and digits: benchmarks/time_to_quality.py.)

    .venv/bin/python benchmarks/rgb_folder.py --mnist /work/shared/data/mnist --minutes 8

Scored on --num samples (DDIM, 50 steps, both runs) against the folder's held-out test split (10%, as every image
folder) in two spaces: the ink, the brightest channel centre-cropped to 28x28, in the MNIST feature net (FD,
precision, recall: are the shapes digits?), and the colours, a 6-D feature per image (mean RGB of its ink pixels and
of its background pixels: are foreground / background pairs drawn as in the data?), FD there. The same number of
real training images give the floor of both. Seed drawn at run time. Writes docs/benchmarks/rgb_folder.md and
rgb_folder_<run>.png.
"""
from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT / "src"))
DOCS = ROOT / "docs" / "benchmarks"


def make_folder(mnist: str, out: Path, num: int) -> None:
    """``num`` coloured MNIST training digits, padded to 32x32, as PNG files in class folders."""
    from PIL import Image

    from difflab.data import colored, load

    if (out / "done").exists():
        return
    data = load(f"mnist:{mnist}")
    x = torch.nn.functional.pad(data.stored[:num], (2, 2, 2, 2))  # black border, coloured as background below
    x = colored(x, seed=0)
    for i, (img, y) in enumerate(zip(x.permute(0, 2, 3, 1).numpy(), data.y[:num].tolist())):
        d = out / str(y)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:05d}.png")
    (out / "done").write_text(str(num))


def ink(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, 32, 32] in [-1, 1] -> the brightest channel, centre 28x28 [N, 1, 28, 28]."""
    return x.amax(1, keepdim=True)[..., 2:30, 2:30]


def colour_features(x: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> [N, 6]: mean RGB of the ink pixels (brightest channel above 0) and of the rest."""
    m = (x.amax(1, keepdim=True) > 0).float()
    fg = (x * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)
    bg = (x * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3)).clamp_min(1)
    return torch.cat([fg, bg], 1).double().numpy()


def score(x: torch.Tensor, real: dict) -> dict:
    from difflab.evaluation import evaluate_features
    from difflab.evaluation.metrics import frechet_distance

    m = evaluate_features(real["ex"](ink(x)), real["ink"])
    return {"fd": m["fd"], "precision": m["precision"], "recall": m["recall"],
            "colour_fd": frechet_distance(colour_features(x), real["colour"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default="/work/shared/data/mnist", help="folder of MNIST's IDX files")
    ap.add_argument("--folder", type=Path, default=Path("/tmp/difflab_rgb32"), help="where the PNG folder is made")
    ap.add_argument("--images", type=int, default=22000, help="images in the folder (10%% held out as its test split)")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "rgb_folder")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6) + 1
    print(f"seed {seed}", flush=True)
    t0 = time.time()
    make_folder(args.mnist, args.folder, args.images)
    print(f"folder {args.folder}: {args.images} PNG files in {time.time() - t0:.0f} s", flush=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    recipes = {"default": [], "former_default": ["--recipe", "ddpm"]}

    def train(name: str) -> None:
        out = args.runs / name
        if (out / "checkpoint.safetensors").exists():
            return
        cmd = [PY, "-m", "difflab", "train", "--data", str(args.folder), "--out", str(out), "--minutes",
               f"{args.minutes:g}", "--threads", "1", "--seed", str(seed), "--quiet", *recipes[name]]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(train, recipes))
    torch.set_num_threads(2)
    import difflab
    from difflab.data import load
    from difflab.evaluation import get_extractor
    from difflab.utils.images import save_image_grid

    test, train_set = load(str(args.folder), "test"), load(str(args.folder), "train")
    ex = get_extractor("mnist")
    ref = test.x
    real = {"ex": ex, "ink": ex(ink(ref)), "colour": colour_features(ref)}
    # a seeded random subset: the folder's files are read class folder by class folder
    pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:args.num]
    floor = score(train_set.batch(pick), real)
    rows = []
    for name in recipes:
        run = difflab.load(args.runs / name, device="cpu")
        x, secs = run.timed_sample(args.num, seed, sampler="ddim", steps=50)
        save_image_grid(x[:64], DOCS / f"rgb_folder_{name}.png", nrow=8)
        cfg = json.loads((args.runs / name / "config.json").read_text())
        steps = (args.runs / name / "log.csv").read_text().strip().splitlines()[-1].split(",")[0]
        rows.append({"run": name, "steps": steps, "batch": cfg["train"]["batch_size"],
                     "prediction": cfg.get("prediction", ""),
                     "params": run.num_params, "sec_per_1000": secs * 1000 / args.num, **score(x, real)})
        print(rows[-1], flush=True)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write(rows, floor, args, seed, load_before, load_after)


def write(rows, floor, args, seed, load_before, load_after) -> None:
    lines = ["| run | train steps | batch | params | FD (ink) | precision | recall | colour FD | s / 1000 samples |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['steps']} | {r['batch']} | {r['params']:,} | {r['fd']:.1f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['colour_fd']:.4f} | {r['sec_per_1000']:.0f} |")
    lines.append(f"| {args.num} real training images (random) | | | | {floor['fd']:.2f} | {floor['precision']:.3f} | "
                 f"{floor['recall']:.3f} | {floor['colour_fd']:.4f} | |")
    cmd = (f".venv/bin/python benchmarks/rgb_folder.py --mnist {args.mnist} --images {args.images} "
           f"--minutes {args.minutes:g} --num {args.num}")
    text = ["# The default recipe on a 32x32 RGB image folder", "",
            f"Command: `{cmd}` (seed drawn at run time: {seed})  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; two trainings of {args.minutes:g} minutes "
            "at the same time, one thread each.  ",
            f"Machine load (`uptime`, 2 cores; 2.0 = the two one-thread trainings): before `{load_before}`; after "
            f"`{load_after}`.", "",
            __doc__.split("\n\n")[0].replace("\n", " "), "",
            f"{args.num} samples per run, DDIM 50 steps, scored against the folder's test split "
            f"({args.images // 10} images): FD / precision / recall of the ink in the MNIST feature net, and the FD "
            "of the 6-D colour features (benchmarks/rgb_folder.py).", "", *lines, "",
            "![default](rgb_folder_default.png) ![former default](rgb_folder_former_default.png)", ""]
    (DOCS / "rgb_folder.md").write_text("\n".join(text))
    print((DOCS / "rgb_folder.md").read_text())


if __name__ == "__main__":
    main()
