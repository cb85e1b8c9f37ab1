"""Every model family at equal minutes on MNIST with the current default network and recipe: diffusion (the
default flow-matching recipe), the same network on the DDPM recipe (VP, eps), latent diffusion, LSGM, DDGAN
(T = 4), GAN, VAE, CLD, and a consistency student distilled from the diffusion run in the same minutes.

    .venv/bin/python benchmarks/families.py --data mnist:/work/shared/data/mnist --minutes 15

Every training is a `difflab` command with --threads 1, two at a time (the machine's two cores); the student
starts when its teacher is done. Two `difflab report` calls (one thread each, at the same time) score every run
with the same seed and reference (the first --ref-num training images): the denoiser runs with the ODE / SDE
methods, the others with their own sampler, the student with 1, 2 and 4 consistency calls. The seed is drawn at
run time unless --seed is given. Writes runs to --runs and docs/benchmarks/families.md (+ families/ pictures).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT / "src"))

from difflab.training.recipes import PATCH_BATCH, PATCH_NETWORK  # noqa: E402

PATCH = {"kind": "unet", **PATCH_NETWORK}
#: Recipes (JSON of each family's config) beside the CLI defaults; the budget is --minutes for every run.
RECIPES = {
    "diffusion": {},  # the default recipe for 28x28 images: flow matching, logit-normal t, the patch-2 U-Net, batch 32
    "diffusion_vp": {"network": PATCH, "batch_size": PATCH_BATCH},  # --recipe ddpm: VP cosine table, eps
    # docs/benchmarks/latent.md's recipe: an autoencoder 1x28x28 -> 4x7x7 for a third of the minutes, then the
    # latent runs' default (flow matching, Euler-Maruyama 50; DDPM on LDM's scaled-linear table before 2026-12-08)
    "autoencoder": {"batch_size": 64, "lr": 2e-3},
    "latent": {"batch_size": 64, "lr": 2e-3},
    "latent_ddpm": {"batch_size": 64, "lr": 2e-3},  # the same on --recipe ddpm (eps on LDM's table): the former default
    "lsgm": {"batch_size": 64, "network": {"channels": 16}},
    # docs/benchmarks/trilemma_families.md's image recipes
    "ddgan_T4": {"batch_size": 64, "lr": 2e-4, "lr_d": 4e-4, "d_steps": 2},
    "gan": {"batch_size": 64, "lr": 2e-4, "lr_d": 2e-4},
    "vae": {"batch_size": 64, "lr": 1e-3},
    # the same patch network (it reads (x, v): two channels) and batch as the diffusion runs; docs/benchmarks/cld.md's lr
    "cld": {"network": dict(PATCH_NETWORK), "batch_size": PATCH_BATCH, "lr": 5e-4},
}
DENOISER_METHODS = "ddim:5,ddim:10,ddim:20,ddim:50,euler_maruyama:50,ddpm:100"
STUDENT_METHODS = "consistency:1,consistency:2,consistency:4"
AE_FRACTION = 1 / 3


def run(cmd: list[str]) -> None:
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def common(data: str, out: Path, minutes: float, seed: int, cfg: Path | None) -> list[str]:
    cmd = [PY, "-m", "difflab", "train", "--data", data, "--out", str(out), "--minutes", f"{minutes:.3f}",
           "--threads", "1", "--seed", str(seed), "--quiet"]
    return cmd + (["--config", str(cfg)] if cfg else [])


def config(runs: Path, name: str) -> Path | None:
    if not RECIPES.get(name):
        return None
    path = runs / f"{name}.json"
    path.write_text(json.dumps(RECIPES[name]))
    return path


def train(name: str, data: str, minutes: float, runs: Path, seed: int, teacher: Future | None = None) -> Path:
    out = runs / name
    if (out / "checkpoint.safetensors").exists():
        return out
    if name == "student":
        teacher_dir = teacher.result()
        run([PY, "-m", "difflab", "distill", "--run", str(teacher_dir), "--method", "consistency", "--prediction",
             "teacher", "--minutes", f"{minutes:g}", "--threads", "1", "--seed", str(seed), "--out", str(out),
             "--quiet"])
        return out
    if name in ("latent", "latent_ddpm"):  # latent_ddpm: start it after latent, which trains the autoencoder
        t0 = time.monotonic()
        ae = runs / "autoencoder"
        used = minutes * AE_FRACTION  # charged to a prior trained on an autoencoder made earlier
        if not (ae / "checkpoint.safetensors").exists():
            run([PY, "-m", "difflab", "train-autoencoder", "--data", data, "--out", str(ae), "--latent", "4x7x7",
                 "--minutes", f"{minutes * AE_FRACTION:.3f}", "--config", str(config(runs, "autoencoder")),
                 "--threads", "1", "--seed", str(seed), "--quiet"])
            used = (time.monotonic() - t0) / 60  # the autoencoder, its scale-factor pass and pictures
        run(common(data, out, max(0.1, minutes - used), seed, config(runs, name)) + ["--autoencoder", str(ae)]
            + (["--recipe", "ddpm"] if name == "latent_ddpm" else []))
        return out
    cmd = common(data, out, minutes, seed, config(runs, name))
    family = {"diffusion_vp": None, "ddgan_T4": "ddgan"}.get(name, name)
    if name == "diffusion_vp":
        cmd += ["--recipe", "ddpm"]
    elif family != "diffusion":
        cmd += ["--family", family]
    if name == "ddgan_T4":
        cmd += ["--timesteps", "4"]
    run(cmd)
    return out


def calls_for(fd: float, curve: list[tuple[int, float]]) -> float | None:
    """Model calls at which a curve of (calls, FD), FD falling with calls, reaches ``fd`` (log-log interpolation);
    None where it never does within the curve."""
    curve = sorted(curve)
    if curve[0][1] <= fd:
        return float(curve[0][0])
    for (n0, f0), (n1, f1) in zip(curve, curve[1:]):
        if f1 <= fd < f0:
            w = (math.log(f0) - math.log(fd)) / (math.log(f0) - math.log(f1))
            return math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
    return None


def targets(rows: list[dict]) -> list[str]:
    def get(run: str, method: str | None = None) -> dict | None:
        for r in rows:
            if Path(r["run"]).name == run and (method is None or f"{r.get('sampler')}:{r.get('steps')}" == method):
                return r
        return None

    out = []
    diff = [r for r in rows if Path(r["run"]).name == "diffusion"]
    best = min(diff, key=lambda r: r["fd"]) if diff else None
    dd = get("ddgan_T4")
    if dd and best:
        out.append(f"DDGAN T=4 FD {dd['fd']:.4g} within 1.3x the diffusion run's best ({best['method']}: "
                   f"{best['fd']:.4g} -> {1.3 * best['fd']:.4g}): {'met' if dd['fd'] <= 1.3 * best['fd'] else 'not met'}")
        out.append(f"DDGAN T=4 recall {dd['recall']:.3f} within 0.05 of the same row's {best['recall']:.3f}: "
                   f"{'met' if dd['recall'] >= best['recall'] - 0.05 else 'not met'}")
    pixel = [(r["nfe"], r["fd"]) for r in diff if r.get("sampler") == "ddim"]
    lat = [r for r in rows if Path(r["run"]).name == "latent" and r.get("sampler") == "ddim"]
    if pixel and lat:
        parts, met = [], False
        for r in sorted(lat, key=lambda r: r["nfe"]):
            need = calls_for(r["fd"], pixel)
            if need is None:
                parts.append(f"latent FD {r['fd']:.4g} at {r['nfe']} calls: the pixel run does not reach it within "
                             f"{max(n for n, _ in pixel)} calls")
                met = met or max(n for n, _ in pixel) >= 2 * r["nfe"]
            else:
                parts.append(f"latent FD {r['fd']:.4g} at {r['nfe']} calls: pixel needs {need:.0f} ({need / r['nfe']:.2f}x)")
                met = met or need >= 2 * r["nfe"]
        out.append("Latent diffusion at least 2x fewer ODE (DDIM) calls at equal FD: " + "; ".join(parts)
                   + f": {'met' if met else 'not met'}")
    cld, vp = get("cld"), get("diffusion_vp", "euler_maruyama:50")
    if cld and vp:
        out.append(f"CLD-SSCS at {cld['nfe']} calls FD {cld['fd']:.4g} at most VP-EM's at 50 ({vp['fd']:.4g}): "
                   f"{'met' if cld['fd'] <= vp['fd'] else 'not met'}")
    st = get("student", "consistency:4")
    if st and best:
        out.append(f"4-call consistency student FD {st['fd']:.4g} within 1.5x its teacher's best ({best['fd']:.4g} -> "
                   f"{1.5 * best['fd']:.4g}): {'met' if st['fd'] <= 1.5 * best['fd'] else 'not met'}")
    return out


def steps_of(run_dir: Path) -> str:
    log = run_dir / "log.csv"
    if not log.exists():
        return ""
    lines = log.read_text().strip().splitlines()
    head = lines[0].split(",")
    return lines[-1].split(",")[head.index("step")] if "step" in head and len(lines) > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist:/work/shared/data/mnist")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--num", type=int, default=500, help="samples per report row")
    ap.add_argument("--ref-num", type=int, default=10000)
    ap.add_argument("--seed", type=int, help="training and sampling seed (default: drawn at run time)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "families")
    ap.add_argument("--only", help="comma list of runs (default all)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "families.md",
                    help="the page; its pictures go to the folder of the same name without .md")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}", flush=True)
    runs = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    names = ["diffusion", "ddgan_T4", "diffusion_vp", "latent", "gan", "vae", "lsgm", "cld", "student"]
    if args.only:  # latent_ddpm (the former latent recipe) only on request
        names = [n for n in [*names, "latent_ddpm"] if n in args.only.split(",")]
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0 = time.time()
    futures: dict[str, Future] = {}
    with ThreadPoolExecutor(2) as pool:
        for n in names:
            futures[n] = pool.submit(train, n, args.data, args.minutes, runs, seed, futures.get("diffusion"))
        dirs = {n: f.result() for n, f in futures.items()}
    t_train = time.time() - t0
    out = args.out.with_suffix("")
    denoisers = ("diffusion", "diffusion_vp", "latent", "latent_ddpm")
    groups = [([n for n in names if n in denoisers], DENOISER_METHODS, "denoisers"),
              ([n for n in names if n not in denoisers], STUDENT_METHODS, "others")]
    cmds = [[PY, "-m", "difflab", "report", "--run", *[str(dirs[n]) for n in g], "--methods", m, "--num",
             str(args.num), "--out", str(out / tag), "--threads", "1", "--seed", str(seed), "--ref-num",
             str(args.ref_num)] for g, m, tag in groups if g]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda c: subprocess.run(c, check=True, stdout=subprocess.DEVNULL), cmds))
    rows = []
    for g, _, tag in groups:
        if g:
            rows += json.loads((out / tag / "report.json").read_text())["rows"]
    for n, d in dirs.items():
        if (d / "samples.png").exists():
            shutil.copy(d / "samples.png", out / f"samples_{n}.png")
    floor = real_floor(args.data, args.num, args.ref_num)
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    write_page(rows, dirs, args, seed, floor, t_train, time.time() - t0, load_before, load_after,
               [tag for g, _, tag in groups if g])


def real_floor(data: str, num: int, ref_num: int) -> float:
    """FD of ``num`` test images against the report's reference (the first ref_num training images)."""
    import torch

    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor

    ex = get_extractor("mnist")
    train, test = load(data), load(data, "test")
    ref = ex(train.batch(torch.arange(ref_num)))
    return float(evaluate_features(ex(test.batch(torch.arange(num))), ref)["fd"])


def write_page(rows, dirs, args, seed, floor, t_train, t_all, load_before, load_after, tags) -> None:
    cols = ["method", "family", "steps", "nfe", "sec_per_1000", "params", "fd", "precision", "recall", "coverage", "nll"]
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = ["| " + " | ".join(c if c != "steps" else "train steps" for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for r in rows:
        name = Path(r["run"]).name
        r = {**r, "method": name if r.get("own_sampler") else f"{name} {r['sampler']}:{r['steps']}",
             "steps": steps_of(dirs[name])}
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    cmd = (f".venv/bin/python benchmarks/families.py --data {args.data} --minutes {args.minutes:g} --num {args.num} "
           f"--ref-num {args.ref_num}" + (f" --only {args.only}" if args.only else "")
           + (f" --out {args.out}" if args.out.name != "families.md" else ""))
    pics = args.out.stem
    text = [
        "# Every family at equal minutes", "",
        f"Command: `{cmd}` (seed drawn at run time: {seed})  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {len(dirs)} trainings of {args.minutes:g} "
        f"minutes, two at a time with one thread each; {t_train / 60:.0f} minutes of training, {t_all / 60:.0f} in all.  ",
        f"Machine load (`uptime`, 2 cores; 2.0 = this benchmark's two one-thread jobs): before `{load_before}`; "
        f"after `{load_after}`.", "",
        f"Data {args.data}; {args.num} samples per row scored in the MNIST feature net against the first "
        f"{args.ref_num} training images; {args.num} test images score FD {floor:.3g} against the same reference "
        "(the floor). Recipes: `RECIPES` in benchmarks/families.py (the diffusion row is the CLI's default recipe; "
        "`diffusion_vp` the same network and batch on `--recipe ddpm`; the latent row spends a third of its minutes "
        "on the autoencoder). `train steps`: the run's last logged step (the student: its optimisation steps). The two "
        "reports ran at the same time with one thread each, so `sec_per_1000` compares within this table only.", "",
        *lines, "", "Targets of the issue:", "", *[f"- {t}" for t in targets(rows)], "",
        " ".join(f"![{t}]({pics}/{t}/trilemma.png)" for t in tags), "",
        " ".join(f"![{n}]({pics}/samples_{n}.png)" for n in dirs if (args.out.with_suffix("") /
                                                                   f"samples_{n}.png").exists()), ""]
    page = args.out
    page.write_text("\n".join(text))
    print(page.read_text())


if __name__ == "__main__":
    main()
