"""Time to quality: difflab's default recipe against a diffusers training loop after equal minutes.

Both trainings run at the same time, one thread each, so they see the same machine:
  difflab   what ``difflab train --data DATA`` trains (the default recipe for the data's size:
            docs/training.md), through the same library call;
  diffusers the loop a competent diffusers user writes: UNet2DModel of the size of difflab's former default
            network (the same architecture), DDPMScheduler (linear betas, 1000 steps), AdamW at a learning rate
            suited to a ~1M-parameter network (1e-3 after 200 warm-up steps, as difflab uses; --diffusers-lr),
            EMAModel (decay 0.999 with warm-up), the same batch size (that of difflab's recipe unless --batch).
Weights are snapshotted when each budget is reached (the clock pauses while saving). Afterwards every snapshot
draws --num samples: difflab with its run's default sampler (``difflab.load(run).sample``: Heun in 25 calls for
the default recipe) and, like for like, with DDIM in 50 steps; diffusers with DDIMScheduler in 50 steps and its
x0 clipping. They are scored by FD, precision and recall
in the data's feature network against the test split. The seed of the samples is drawn at run time and
recorded. The floor: --num real training images scored the same way.

    python benchmarks/time_to_quality.py                                      # digits, 1, 3, 10 minutes
    python benchmarks/time_to_quality.py --data mnist:$DIFFLAB_MNIST          # MNIST, 2, 5, 10, 20 minutes
    python benchmarks/time_to_quality.py --budgets 0.2,0.5 --num 200          # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DEFAULT_BUDGETS = {"digits": "1,3,10", "mnist": "2,5,10,20"}


def kind(data: str) -> str:
    return data.split(":")[0]


def worker_difflab(args: argparse.Namespace, budgets: list[float]) -> None:
    from difflab.data import load
    from difflab.training import TrainConfig, train
    from difflab.training.recipes import default_recipe

    data = load(args.data)
    cfg = TrainConfig.from_dict({**default_recipe(data.shape), "batch_size": args.batch})
    run = args.work / "difflab_run"
    shutil.rmtree(run, ignore_errors=True)
    done, steps = 0.0, {}
    for b in budgets:
        res = train(cfg.replace(minutes=b - done), data, run, resume=run.exists(), progress=False)
        done, steps[f"{b:g}"] = b, res.step
        snap = args.work / f"difflab_{b:g}"
        shutil.rmtree(snap, ignore_errors=True)
        shutil.copytree(run, snap)
        print(f"difflab {b:g} min: step {res.step}", flush=True)
    (args.work / "difflab_steps.json").write_text(json.dumps({"steps": steps, "recipe": cfg.to_dict()}, default=str))


def diffusers_model(shape: tuple[int, ...]):
    from diffusers import UNet2DModel
    from throughput import diffusers_kwargs

    from difflab.models.unet import unet_digits, unet_mnist

    c, h, _ = shape
    preset = (unet_digits if h <= 16 else unet_mnist)(in_channels=c, out_channels=c)
    torch.manual_seed(0)
    return UNet2DModel(**diffusers_kwargs(preset, h))


def worker_diffusers(args: argparse.Namespace, budgets: list[float]) -> None:
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from safetensors.torch import save_file

    from difflab.data import load

    data = load(args.data)
    model = diffusers_model(data.shape).train()
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True)
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=args.diffusers_lr)
    lr_sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=200)
    g = torch.Generator().manual_seed(0)
    step, paused, t0, steps = 0, 0.0, time.monotonic(), {}
    for b in budgets:
        while time.monotonic() - t0 - paused < 60 * b:
            x0 = data.batch(torch.randint(len(data), (args.batch,), generator=g))
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, 1000, (args.batch,), generator=g)
            loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            ema.step(model.parameters())
            step += 1
        s = time.monotonic()
        shadow = diffusers_model(data.shape)
        ema.copy_to(shadow.parameters())
        save_file({k: v.contiguous() for k, v in shadow.state_dict().items()}, str(args.work / f"diffusers_{b:g}.safetensors"))
        paused += time.monotonic() - s
        steps[f"{b:g}"] = step
        print(f"diffusers {b:g} min: step {step}", flush=True)
    (args.work / "diffusers_steps.json").write_text(json.dumps({"steps": steps}))


@torch.no_grad()
def samples_difflab(run: Path, num: int, seed: int, sampler: str | None = None, steps: int | None = None
                    ) -> tuple[torch.Tensor, str]:
    """Samples of the run with ``sampler`` / ``steps`` (default: the run's) and the name of what drew them."""
    import difflab

    r = difflab.load(run, device="cpu")
    x = r.sample(num, seed=seed, sampler=sampler, steps=steps)
    return x, f"{sampler or r.default_sampler} {r.nfe} calls"


@torch.no_grad()
def samples_diffusers(path: Path, shape: tuple[int, ...], num: int, seed: int) -> torch.Tensor:
    from diffusers import DDIMScheduler, DDPMScheduler
    from safetensors.torch import load_file

    model = diffusers_model(shape).eval()
    model.load_state_dict(load_file(str(path)))
    sched = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000).config)
    sched.set_timesteps(50)
    x = torch.randn((num, *shape), generator=torch.Generator().manual_seed(seed))
    out = []
    for chunk in x.split(250):
        for t in sched.timesteps:
            chunk = sched.step(model(chunk, t).sample, t, chunk).prev_sample
        out.append(chunk.clamp(-1, 1))
    return torch.cat(out)


def worker_eval(args: argparse.Namespace, budgets: list[float], lib: str) -> None:
    """Samples of every snapshot of one library, scored against the test split (written to eval_LIB.json)."""
    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor

    ex = get_extractor(kind(args.data))
    ref = ex(load(args.data, split="test").x)
    rows = {}
    for b in budgets:
        t0 = time.monotonic()
        if lib == "difflab":
            x, rows[f"{b:g}_sampler"] = samples_difflab(args.work / f"difflab_{b:g}", args.num, args.seed)
        else:
            x = samples_diffusers(args.work / f"diffusers_{b:g}.safetensors", load(args.data).shape, args.num, args.seed)
        from difflab.utils.images import save_image_grid

        save_image_grid(x[:64], args.work / f"{lib}_{b:g}.png", nrow=8)
        rows[f"{b:g}"] = {**evaluate_features(ex(x), ref), "sample_s": round(time.monotonic() - t0, 1)}
        if lib == "difflab":  # like for like with the diffusers loop: DDIM in 50 steps
            rows[f"{b:g}"]["sampler"] = rows.pop(f"{b:g}_sampler")
            t0 = time.monotonic()
            x, _ = samples_difflab(args.work / f"difflab_{b:g}", args.num, args.seed, "ddim", 50)
            m = evaluate_features(ex(x), ref)
            rows[f"{b:g}"].update({f"ddim_{k}": v for k, v in m.items()}, ddim_sample_s=round(time.monotonic() - t0, 1))
        print(lib, b, rows[f"{b:g}"], flush=True)
    (args.work / f"eval_{lib}.json").write_text(json.dumps(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits or mnist:DIR")
    p.add_argument("--budgets", help="training minutes, comma-separated, increasing (default 1,3,10 on digits, "
                                     "2,5,10,20 on MNIST)")
    p.add_argument("--batch", type=int, help="both trainings' batch (default: that of difflab's default recipe)")
    p.add_argument("--diffusers-lr", type=float, default=1e-3)
    p.add_argument("--num", type=int, default=1000, help="samples per snapshot")
    p.add_argument("--seed", type=int, help="seed of the samples (default: drawn at run time)")
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_time_to_quality"))
    p.add_argument("--out", type=Path, help="the page (default docs/benchmarks/time_to_quality[_mnist].md)")
    p.add_argument("--worker", choices=["difflab", "diffusers", "eval-difflab", "eval-diffusers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.budgets = args.budgets or DEFAULT_BUDGETS[kind(args.data)]
    budgets = sorted(float(b) for b in args.budgets.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        if args.worker.startswith("eval-"):
            worker_eval(args, budgets, args.worker[5:])
        else:
            {"difflab": worker_difflab, "diffusers": worker_diffusers}[args.worker](args, budgets)
        return
    if args.seed is None:
        args.seed = secrets.randbelow(2**31)
    if args.batch is None:
        from difflab.data import load
        from difflab.training.recipes import default_recipe

        args.batch = default_recipe(load(args.data).shape).get("batch_size", 128)
    args.out = args.out or ROOT / "docs" / "benchmarks" / ("time_to_quality.md" if kind(args.data) == "digits"
                                                           else f"time_to_quality_{kind(args.data)}.md")
    command = "python benchmarks/time_to_quality.py " + " ".join(sys.argv[1:])
    load_before, t_start = os.getloadavg(), time.monotonic()
    common = ["--data", args.data, "--budgets", args.budgets, "--batch", str(args.batch), "--work", str(args.work),
              "--diffusers-lr", str(args.diffusers_lr), "--num", str(args.num), "--seed", str(args.seed)]

    def both(workers: list[str]) -> None:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", w, *common]) for w in workers]
        if any(pr.wait() for pr in procs):
            sys.exit(f"a worker of {workers} failed")

    both(["difflab", "diffusers"])
    load_train = os.getloadavg()
    both(["eval-difflab", "eval-diffusers"])
    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor

    ex = get_extractor(kind(args.data))
    train_set = load(args.data)
    idx = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))[:args.num]
    real = evaluate_features(ex(train_set.batch(idx)), ex(load(args.data, split="test").x))
    ev = {lib: json.loads((args.work / f"eval_{lib}.json").read_text()) for lib in ("difflab", "diffusers")}
    rows = [{"minutes": b, **{f"{lib}_{k}": v for lib in ev for k, v in ev[lib][f"{b:g}"].items()}} for b in budgets]
    write(rows, real, args, command, [load_before, load_train, os.getloadavg()], time.monotonic() - t_start)


def write(rows: list[dict], real: dict, args: argparse.Namespace, command: str, loads: list, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = {lib: json.loads((args.work / f"{lib}_steps.json").read_text()) for lib in ("difflab", "diffusers")}
    steps = {lib: info[lib]["steps"] for lib in info}
    recipe = info["difflab"].get("recipe", {})
    name = kind(args.data)
    target_fd = 2 * real["fd"]
    lines = [f"# Time to quality on {name}: difflab's default recipe vs a diffusers loop", "",
             f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{seconds / 60:.0f} min in all  ",
             f"torch {torch.__version__}, one thread per training, both trainings at the same time on the 2-core "
             f"machine, nothing else running. Load (`os.getloadavg`, 1/5/15 min) before: {loads[0][0]:.2f} / "
             f"{loads[0][1]:.2f} / {loads[0][2]:.2f}; after training: {loads[1][0]:.2f} / {loads[1][1]:.2f} / "
             f"{loads[1][2]:.2f}; at the end: {loads[2][0]:.2f} / {loads[2][1]:.2f} / {loads[2][2]:.2f}.", "",
             f"difflab's recipe (what `difflab train --data {name}` trains): schedule `{recipe.get('schedule')}`, "
             f"prediction `{recipe.get('prediction')}`, noise `{recipe.get('noise')}`, network "
             f"`{recipe.get('network')}`, lr {recipe.get('lr')}, batch {args.batch}.  ",
             f"diffusers: UNet2DModel of the former default architecture, DDPMScheduler (linear), AdamW lr "
             f"{args.diffusers_lr:g} after 200 warm-up steps, gradient clipping 1, EMAModel 0.999 with warm-up, "
             f"batch {args.batch}.", "",
             f"{args.num} samples per snapshot: difflab with its run's default sampler ({rows[0].get('difflab_sampler', 'ddim 50 calls')}) "
             f"and with DDIM in 50 steps, diffusers with DDIM in 50 steps (x0 clipped); sample seed {args.seed} (drawn "
             f"at run time), scored in difflab's {name} feature network against the test split. "
             f"{args.num} real training images score FD {real['fd']:.2f}, precision {real['precision']:.3f}, "
             f"recall {real['recall']:.3f} (the floor).", "",
             "| minutes | difflab steps | diffusers steps | difflab FD | difflab FD, DDIM-50 | diffusers FD, DDIM-50 "
             "| FD ratio (difflab / diffusers) | ratio, both DDIM-50 | FD / real floor (difflab) | difflab precision, recall "
             "| diffusers precision, recall | sampling s (difflab, difflab DDIM-50, diffusers) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = f"{r['minutes']:g}"
        lines.append(f"| {b} | {steps['difflab'][b]} | {steps['diffusers'][b]} | {r['difflab_fd']:.2f} | "
                     f"{r['difflab_ddim_fd']:.2f} | {r['diffusers_fd']:.2f} | {r['difflab_fd'] / r['diffusers_fd']:.3f} | "
                     f"{r['difflab_ddim_fd'] / r['diffusers_fd']:.3f} | "
                     f"{r['difflab_fd'] / real['fd']:.1f}x | {r['difflab_precision']:.3f}, {r['difflab_recall']:.3f} | "
                     f"{r['diffusers_precision']:.3f}, {r['diffusers_recall']:.3f} | "
                     f"{r['difflab_sample_s']:.0f}, {r['difflab_ddim_sample_s']:.0f}, {r['diffusers_sample_s']:.0f} |")
    at10 = [r for r in rows if r["minutes"] == 10]
    if name == "mnist" and at10:
        r = at10[0]
        lines += ["", f"Targets at 10 minutes: FD within 2x that of {args.num} real training images "
                      f"(<= {target_fd:.2f}): {r['difflab_fd']:.2f}, {'met' if r['difflab_fd'] <= target_fd else 'NOT met'}; "
                      f"at most 0.3x the diffusers loop's FD: {r['difflab_fd'] / r['diffusers_fd']:.3f}x, "
                      f"{'met' if r['difflab_fd'] <= 0.3 * r['diffusers_fd'] else 'NOT met'} "
                      f"(both with DDIM-50: {r['difflab_ddim_fd'] / r['diffusers_fd']:.3f}x)."]
    png = args.out.with_suffix(".png")
    lines += ["", f"![time to quality]({png.name})", "",
              f"Samples at the largest budget: difflab `{args.out.stem}_difflab.png`, diffusers `{args.out.stem}_diffusers.png`.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    last = f"{rows[-1]['minutes']:g}"
    for lib in ("difflab", "diffusers"):
        shutil.copyfile(args.work / f"{lib}_{last}.png", args.out.parent / f"{args.out.stem}_{lib}.png")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key, label in (("difflab", f"difflab ({rows[0].get('difflab_sampler', 'default sampler')})"),
                       ("difflab_ddim", "difflab (DDIM-50)"), ("diffusers", "diffusers (DDIM-50)")):
        ax.plot([r["minutes"] for r in rows], [r[f"{key}_fd"] for r in rows], "o-" if key != "difflab_ddim" else "o--",
                label=label)
    ax.axhline(real["fd"], color="grey", ls="--", label=f"{args.num} real images")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training minutes (1 thread)")
    ax.set_ylabel(f"FD on {name} (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    (args.work / "rows.json").write_text(json.dumps({"rows": rows, "real": real}, indent=1))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
