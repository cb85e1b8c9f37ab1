"""eps vs v vs EDM vs flow matching at equal minutes, and VE's ODE outliers by parameterisation.

Recipes (same network preset, batch, AdamW, EMA, minutes, one thread each, run one after another):
  eps   cosine table, eps prediction, uniform t (difflab's default)
  v     cosine table, v prediction, uniform t
  edm   VE (sigma 0.002..80), EDM preconditioning, log-normal sigma (-1.2, 1.2), EDM weighting
  flow  flow path, velocity prediction, logit-normal t (SD3)
  flow_uw  flow with EDM2's learned uncertainty weighting
Each run draws --num samples with heun at --nfe model calls (the same seed), clipped to [-1, 1], scored by FD,
precision and recall in the data's feature space against the test split.  ``--outliers`` instead trains a VE toy
with eps, x0 and edm prediction and counts samples with |x| > 3 under the ODE and SDE samplers
(the numbers quoted in docs/training.md).  Run on an idle machine; the load is recorded in the JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edm_flow.py --data mnist --minutes 10
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edm_flow.py --data digits --minutes 0.2 --num 200  # smoke run
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/edm_flow.py --outliers --steps 600
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
RECIPES = {
    "eps": {"schedule": {"kind": "cosine", "T": 1000}, "prediction": "eps"},
    "v": {"schedule": {"kind": "cosine", "T": 1000}, "prediction": "v"},
    "edm": {"schedule": {"kind": "ve", "sigma_min": 0.002, "sigma_max": 80.0}, "prediction": "edm",
            "noise": "lognormal", "weighting": "edm"},
    "flow": {"schedule": {"kind": "flow"}, "prediction": "flow", "noise": "logit_normal"},
    # the same with EDM2's learned per-level uncertainty weighting (--weighting uncertainty)
    "flow_uw": {"schedule": {"kind": "flow"}, "prediction": "flow", "noise": "logit_normal", "weighting": "uncertainty"},
}


@torch.no_grad()
def score(run: Path, data: str, num: int, nfe: int, seed: int, grid: Path | None = None) -> dict[str, float]:
    """FD / precision / recall of ``num`` heun samples of a run against the test split (the first 64 to ``grid``)."""
    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor
    from difflab.models.denoiser import Clamped
    from difflab.samplers import sample
    from difflab.training import load_run

    loaded = load_run(run, device="cpu")
    g = torch.Generator().manual_seed(seed)
    x_T = loaded.model.schedule.sample_prior((num, *loaded.shape), generator=g)
    x = sample(Clamped(loaded.model), x_T, sampler="heun", steps=nfe, generator=g)
    if grid is not None:
        from difflab.utils.images import save_image_grid

        save_image_grid(x[:64], grid, nrow=8)
    ex = get_extractor("mnist" if data.split(":")[0] == "mnist" else "digits")
    return evaluate_features(ex(x), ex(load(data, split="test").x))


def nll(run: Path, data: str, num: int, seed: int) -> dict[str, float]:
    """Probability-flow ODE NLL (bits/dim, 256 bins, uniform dequantisation, dopri5 rtol = atol = 1e-4, Hutchinson
    trace) of the first ``num`` test images: the one likelihood every parameterisation here has."""
    import difflab
    from difflab.data import load

    t0 = time.monotonic()
    x = load(data, split="test").batch(torch.arange(num))
    r = difflab.load(run, device="cpu").nll(x, seed, "ode", rtol=1e-4, atol=1e-4)
    return {"nll": r["nll"], "nll_ci95": r["ci95"], "nll_n": r["n"], "nll_s": round(time.monotonic() - t0, 1)}


def compare(args: argparse.Namespace) -> list[dict]:
    from difflab.data import load
    from difflab.training import TrainConfig, train

    data, rows = load(args.data), []
    if args.real:  # the floor: as many real training images as samples, scored the same way
        from difflab.evaluation import evaluate_features, get_extractor

        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.num]
        ex = get_extractor("mnist" if args.data.split(":")[0] == "mnist" else "digits")
        rows.append({"recipe": "real training images", **evaluate_features(ex(data.batch(idx)),
                                                                          ex(load(args.data, split="test").x))})
        print(rows[-1], flush=True)
    net = {}
    if args.network == "patch":  # the default recipe's network and batch for images of side >= 16
        from difflab.training.recipes import PATCH_BATCH, PATCH_NETWORK

        net = {"network": {"kind": "unet", **PATCH_NETWORK}, "batch_size": PATCH_BATCH}
    for name in args.recipes:
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig.from_dict({**RECIPES[name], **net, "minutes": args.minutes, "seed": args.seed,
                                         "checkpoint_every": 10**9, "log_every": 100})
            t0 = time.monotonic()
            res = train(cfg, data, Path(d) / "run", progress=False)
            row = {"recipe": name, "steps": res.step, "train_s": round(time.monotonic() - t0, 1),
                   **score(Path(d) / "run", args.data, args.num, args.nfe, args.seed + 1,
                            OUT / f"edm_flow_{args.data.split(':')[0]}_{name}{'_' + args.tag if args.tag else ''}.png")}
            if args.nll:
                row.update(nll(Path(d) / "run", args.data, args.nll, args.seed + 2))
        rows.append(row)
        print(row, flush=True)
    return rows


def outliers(args: argparse.Namespace) -> list[dict]:
    """VE on moons: fraction of samples with |x| > 3 for eps, x0 and edm prediction (log-normal and uniform
    noise levels) under ODE and SDE samplers."""
    from difflab.data import load
    from difflab.samplers import sample
    from difflab.training import TrainConfig, load_run, train

    data, rows = load("toy:moons"), []
    for pred, extra in [("eps", {}), ("x0", {}), ("edm", {"noise": "lognormal", "weighting": "edm"}), ("edm", {})]:
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig.from_dict({"schedule": {"kind": "ve"}, "prediction": pred, "steps": args.steps,
                                         "batch_size": 256, "seed": args.seed, "checkpoint_every": 10**9,
                                         "network": {"hidden": 64, "depth": 3}, **extra})
            train(cfg, data, Path(d) / "run", progress=False)
            model = load_run(Path(d) / "run", device="cpu").model
            for sampler in ("euler", "heun", "dpmpp_2m", "euler_maruyama"):
                g = torch.Generator().manual_seed(args.seed + 1)
                with torch.no_grad():
                    x = sample(model, model.schedule.sample_prior((4000, 2), generator=g), sampler=sampler,
                               steps=50, generator=g)
                a = x.abs().amax(1)
                rows.append({"prediction": pred, "noise": extra.get("noise", "uniform"), "sampler": sampler, "max_abs": float(a.max()),
                             "outliers": float((a > 3).float().mean())})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--nfe", type=int, default=35)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outliers", action="store_true", help="the VE outlier count instead of the comparison")
    p.add_argument("--steps", type=int, default=600, help="--outliers: training steps")
    p.add_argument("--tag", default="")
    p.add_argument("--real", action="store_true", help="also score --num real training images (the floor)")
    p.add_argument("--network", choices=["preset", "patch"], default="preset",
                   help="preset: the data's default U-Net preset at batch 128; patch: the default recipe's patch-2 "
                        "U-Net at batch 32")
    p.add_argument("--nll", type=int, default=0, metavar="N", help="also the ODE NLL of N test images")
    args = p.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    rows = outliers(args) if args.outliers else compare(args)
    name = ("edm_flow_outliers" if args.outliers else f"edm_flow_{args.data.split(':')[0]}") + (f"_{args.tag}" if args.tag else "")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"args": vars(args), "load_before": load, "load_after": os.getloadavg(),
                                                  "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
