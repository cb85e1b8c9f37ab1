"""Where an LSGM run's FD comes from: reconstructions through the posterior mean, decoding a N(0, I) prior instead of
the score prior, and the latent dopri5 (rtol = atol = 1e-3) and Heun (10 steps) samplers; 500 samples against the
MNIST test set, scored as in benchmarks/latent.py.  Prints JSON.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lsgm_diagnostics.py RUN_DIR
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latent as L  # noqa: E402


def main(run: Path) -> dict[str, float]:
    from difflab.evaluation import evaluate_features
    from difflab.likelihood.lsgm import latent_gaussian
    from difflab.training.families import load_generator

    g = load_generator(run, device="cpu")
    enc, dec, prior = (g.modules[k] for k in ("encoder", "decoder", "prior"))
    ex, ref = L.reference()
    out: dict[str, float] = {}
    with torch.no_grad():
        m, v = latent_gaussian(prior.schedule, *enc(L.test_images(500)))
        out["fd_reconstruction"] = evaluate_features(ex(dec(m).clamp(-1, 1)), ref)["fd"]
        out["latent_mean_std"], out["posterior_std_mean"] = float(m.std()), float(v.sqrt().mean())
        z = torch.randn((500, *dec.latent_shape), generator=torch.Generator().manual_seed(7))
        out["fd_normal_prior"] = evaluate_features(ex(dec(z).clamp(-1, 1)), ref)["fd"]
    for sampler, steps in (("dopri5", 20), ("heun", 10)):
        g.recipe = dataclasses.replace(g.recipe, sampler=sampler, sample_steps=steps, rtol=1e-3, atol=1e-3)
        t0 = time.perf_counter()
        x = g.sample(500, 0)
        out[f"sec_per_1000_{sampler}"] = (time.perf_counter() - t0) * 2
        out[f"fd_{sampler}"], out[f"nfe_{sampler}"] = evaluate_features(ex(x), ref)["fd"], g.nfe
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
