"""Named recipes of a diffusion run and the default one for a data set's size (docs/training.md, "Default recipes").

A recipe fixes the parameterisation (schedule, network output, training noise levels, loss weighting) and, where a
measurement chose one, the network. ``difflab train --recipe NAME`` starts from it; options given on the command
line or in a --config file override its fields. ``auto`` (the default) is :func:`default_recipe`: the recipe that
trained the best samples per CPU-minute at the data's size in docs/benchmarks/edm_flow.md and
docs/benchmarks/time_to_quality*.md.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..utils.config import ConfigError

#: The parameterisations compared in docs/benchmarks/edm_flow.md (TrainConfig fields).
RECIPES: dict[str, dict[str, Any]] = {
    # Ho et al. 2020 with Nichol & Dhariwal's cosine table: eps prediction, uniform t
    "ddpm": {"schedule": {"kind": "cosine", "T": 1000}, "prediction": "eps"},
    # Salimans & Ho 2022: v prediction on the same table
    "v": {"schedule": {"kind": "cosine", "T": 1000}, "prediction": "v"},
    # Karras et al. 2022: VE path, preconditioning, log-normal sigma, EDM weighting
    "edm": {"schedule": {"kind": "ve", "sigma_min": 0.002, "sigma_max": 80.0}, "prediction": "edm",
            "noise": "lognormal", "weighting": "edm"},
    # Lipman et al. 2023 / Liu et al. 2023: the linear path, velocity prediction, SD3's logit-normal t
    "flow": {"schedule": {"kind": "flow"}, "prediction": "flow", "noise": "logit_normal"},
}
#: The sampler of the default image recipe's previews and of ``difflab sample`` on its runs: Heun in 25 calls had the
#: best FD among eight sampler settings of about 50 calls on five runs of that recipe (MNIST, digits), scored
#: against the training split (docs/benchmarks/default_sampler.md); the other recipes keep TrainConfig's DDIM in 50 steps.
#: Heun in 12 calls on the trailing grid scored better on three under-trained runs but worse on fresh, fully trained
#: ones (docs/benchmarks/default_sampler_grid.md): not adopted.
DEFAULT_SAMPLING: dict[str, Any] = {"sampler": "heun", "sample_steps": 25}
#: The sampler of latent runs on the default recipe: Euler-Maruyama in 50 calls had the best FD on three MNIST latent
#: runs (the flow path, and the eps and velocity predictions on LDM's table: 38 / 72 / 42 against 57 / 88 / 55 for
#: DDIM-50), scored against the training split (docs/benchmarks/latent_recipe.md); latents cost 7x fewer FLOPs per call.
LATENT_SAMPLING: dict[str, Any] = {"sampler": "euler_maruyama", "sample_steps": 50}
RECIPE_NAMES: tuple[str, ...] = ("auto", *RECIPES)

#: Images of at least this side get the pixel-unshuffle network (MNIST: 28 -> 14 -> 7).
PATCH_FROM = 16
#: The U-Net of images of side >= PATCH_FROM in the default recipe (overrides of the size preset): the best FD
#: after 5 equal minutes among four networks on MNIST (docs/benchmarks/networks.md).
#: Without dropout (and with the 50-step warm-up below): FD 39 against 49 with the preset's 0.1 after 5 minutes
#: (docs/benchmarks/recipe_screen_mnist.md).
PATCH_NETWORK: dict[str, Any] = {"patch": 2, "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2,
                                 "attention_levels": [1], "dropout": 0.0}
#: Its batch size: 32 trained better samples than 128 in the same minutes on a CPU (docs/benchmarks/networks.md);
#: on a GPU give a larger --batch-size.
PATCH_BATCH = 32
#: The U-Net of smaller images (8x8 digits) in the default recipe (overrides of the size preset): 16 channels, one
#: ResNet block per level, no dropout trained 3-3.6x the steps of the preset in the same minutes and the best FD after 1
#: and 3 minutes among the candidates of docs/benchmarks/recipe_screen_digits*.md (tuned on the training split).
SMALL_NETWORK: dict[str, Any] = {"channels": 16, "num_res_blocks": 1, "dropout": 0.0}
#: Learning-rate warm-up of the default image recipe: TrainConfig's 200 steps spent most of a 1-minute digits run
#: ramping up (docs/benchmarks/recipe_screen_digits.md); with dropout 0 it took MNIST's FD after 5 minutes from 49
#: to 39 (docs/benchmarks/recipe_screen_mnist.md).
WARMUP_STEPS = 50


def default_recipe(shape: Sequence[int]) -> dict[str, Any]:
    """The TrainConfig fields of ``difflab train`` without --recipe, for data of this shape ([C, H, W] or [D]).

    Images: flow matching (best FD per minute on digits and MNIST, docs/benchmarks/edm_flow.md) sampled with Heun
    in 25 calls (docs/benchmarks/default_sampler.md) after a 50-step warm-up; from side 16 up the pixel-unshuffle
    U-Net at batch 32 (docs/benchmarks/networks.md), below it a narrow one-block U-Net without dropout
    (docs/benchmarks/recipe_screen_digits.md). Points keep the DDPM recipe."""
    if len(shape) != 3:
        return dict(RECIPES["ddpm"])
    out = {**RECIPES["flow"], **DEFAULT_SAMPLING, "warmup_steps": WARMUP_STEPS}
    if max(int(shape[1]), int(shape[2])) >= PATCH_FROM:
        out["network"] = {"kind": "unet", **PATCH_NETWORK}
        out["batch_size"] = PATCH_BATCH
    else:
        out["network"] = {"kind": "unet", **SMALL_NETWORK}
    return out


#: The TrainConfig fields a recipe's parameterisation consists of.
PARAMETERISATION = ("schedule", "prediction", "noise", "weighting")


def recipe(name: str, shape: Sequence[int], task: str = "generate", latent: bool = False,
           given: Iterable[str] = ()) -> dict[str, Any]:
    """The TrainConfig fields a new run starts from (what the user gives, ``given``, is merged on top by the caller).

    A named recipe is taken whole. ``auto`` is :func:`default_recipe` for unconditional or conditional generation
    in pixel space; latent runs get the flow-matching parameterisation with Euler-Maruyama in 50 calls (the network,
    batch and warm-up stay those measured in docs/latent.md; docs/benchmarks/latent_recipe.md); image-to-image
    tasks keep the DDPM recipe they were measured with (docs/tasks.md); and once any field of the parameterisation
    (schedule, prediction, noise, weighting) is given, the others (and the sampler) take their TrainConfig defaults
    (DDPM's, DDIM-50), not the default recipe's. (The caller gives an eps-prediction latent run without a schedule
    LDM's table, training/latent.py LATENT_SCHEDULE.)"""
    if name != "auto":
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}")
        return dict(RECIPES[name])
    if task != "generate":
        return {}
    if latent:  # a parameterisation given in part: DDPM's (on LDM's table, see above) and DDIM-50
        return {} if set(given) & set(PARAMETERISATION) else {**RECIPES["flow"], **LATENT_SAMPLING}
    out = default_recipe(shape)
    if set(given) & set(PARAMETERISATION):  # the sampler was chosen for the default parameterisation: drop it too
        out = {k: v for k, v in out.items() if k not in PARAMETERISATION and k not in DEFAULT_SAMPLING}
    return out


__all__ = ["DEFAULT_SAMPLING", "LATENT_SAMPLING", "RECIPES", "RECIPE_NAMES", "PARAMETERISATION", "PATCH_BATCH", "PATCH_NETWORK", "default_recipe", "recipe"]
