"""Named recipes, the default recipe by data size, and the U-Net's pixel-unshuffle stem."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli.main import main
from difflab.models.unet import UNet, UNetConfig, unet_mnist
from difflab.training import TrainConfig
from difflab.training.recipes import PATCH_NETWORK, RECIPES, SMALL_NETWORK, WARMUP_STEPS, default_recipe, recipe
from difflab.utils.config import ConfigError


def cli(*args) -> int:
    return main([str(a) for a in args])


def config_of(run) -> dict:
    return json.loads((run / "config.json").read_text())


# ---- the stem -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(28, 28), (30, 26), (9, 13)])
def test_patch_unet_keeps_any_input_size_and_starts_at_zero(size):
    torch.manual_seed(0)
    net = UNet(unet_mnist(**{k: tuple(v) if isinstance(v, list) else v for k, v in PATCH_NETWORK.items()}))
    x = torch.randn(3, 1, *size)
    out = net(x, torch.rand(3) * 1000)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution, as without the stem
    assert net.config.multiple == 4  # patch 2 x 2 levels: sizes padded to a multiple of 4


def test_patch_stem_sees_every_pixel_and_its_output_pixels_are_independent_channels():
    """After training-free perturbation of the output layer, each output pixel depends on the input (the stem is a
    bijective rearrangement): a change of one input pixel changes the output, and patch=1 is the former network."""
    torch.manual_seed(0)
    cfg = UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(), num_heads=2, groups=4,
                     dropout=0.0, patch=2)
    net = UNet(cfg)
    torch.nn.init.normal_(net.out_conv.weight, std=0.1)
    assert net.input_conv.in_channels == 4 and net.out_conv.out_channels == 4
    x = torch.randn(1, 1, 8, 8)
    t = torch.tensor([500.0])
    y = net(x, t)
    for i, j in [(0, 0), (0, 1), (1, 0), (7, 7)]:  # every position inside a 2x2 patch reaches the network
        x2 = x.clone()
        x2[0, 0, i, j] += 1.0
        assert not torch.allclose(net(x2, t), y)
    old = UNetConfig.from_dict({k: v for k, v in cfg.replace(patch=1).to_dict().items() if k != "patch"})
    assert old.patch == 1 and old.multiple == 2  # configs saved before the field load as the former network


def test_patch_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="patch"):
        UNetConfig(patch=0)


# ---- recipes --------------------------------------------------------------------------------------------------
def test_default_recipe_by_data_size():
    assert default_recipe((2,)) == RECIPES["ddpm"]  # points
    small = default_recipe((1, 8, 8))
    assert small["prediction"] == "flow" and small["schedule"] == {"kind": "flow"}
    assert small["network"] == {"kind": "unet", **SMALL_NETWORK} and "patch" not in small["network"]
    big = default_recipe((3, 32, 32))
    assert big["prediction"] == "flow" and big["network"]["patch"] == 2 and big["batch_size"] == 32
    assert "batch_size" not in small
    assert small["warmup_steps"] == big["warmup_steps"] == WARMUP_STEPS < TrainConfig().warmup_steps
    assert small["sampler"] == big["sampler"] == "heun" and small["sample_steps"] == 25  # docs/benchmarks/default_sampler.md
    assert "sampler" not in default_recipe((2,))


def test_recipe_rules():
    assert recipe("edm", (1, 8, 8)) == RECIPES["edm"]
    assert recipe("auto", (1, 8, 8), task="superres") == {}  # image-to-image tasks keep the DDPM defaults
    latent = recipe("auto", (4, 7, 7), latent=True)  # flow matching with Euler-Maruyama-50, the preset network
    assert latent["prediction"] == "flow" and latent["schedule"] == {"kind": "flow"} and "network" not in latent
    assert (latent["sampler"], latent["sample_steps"]) == ("euler_maruyama", 50)
    assert recipe("auto", (4, 7, 7), latent=True, given=["prediction"]) == {}
    given = recipe("auto", (1, 28, 28), given=["prediction"])  # part of a parameterisation given: no flow fields
    assert set(given) == {"network", "batch_size", "warmup_steps"}  # the network and the run length's settings stay
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        recipe("nope", (1, 8, 8))


def test_difflab_train_applies_the_recipe_and_lets_options_override(tmp_path, capsys):
    tiny = ["--steps", "2", "--batch-size", "8", "--quiet"]
    assert cli("train", "--data", "digits", "--out", tmp_path / "auto", *tiny) == 0
    cfg = config_of(tmp_path / "auto")
    assert cfg["train"]["prediction"] == "flow" and cfg["train"]["noise"] == "logit_normal"
    unet = cfg["network"]["config"] if "config" in cfg.get("network", {}) else cfg["network"]
    assert (unet["channels"], unet["num_res_blocks"], unet["dropout"]) == (16, 1, 0.0)  # the small-image network
    assert cli("train", "--data", "digits", "--out", tmp_path / "cos", "--schedule", "cosine", *tiny) == 0
    cfg = config_of(tmp_path / "cos")["train"]
    assert cfg["prediction"] == "eps" and cfg["noise"] == "uniform"  # a given schedule: the DDPM defaults
    assert cfg["sampler"] == "ddim" and cfg["sample_steps"] == 50  # ... and DDIM-50, not the recipe's Heun
    import difflab

    auto, cos = difflab.load(tmp_path / "auto", device="cpu"), difflab.load(tmp_path / "cos", device="cpu")
    assert (auto.default_sampler, auto.default_steps) == ("heun", 25)  # what `difflab sample` draws with by default
    assert (cos.default_sampler, cos.default_steps) == ("ddim", 50)
    (tmp_path / "s.json").write_text(json.dumps({"sampler": "dpmpp_2m", "sample_steps": 10}))
    assert cli("train", "--data", "digits", "--out", tmp_path / "mine", "--config", tmp_path / "s.json", *tiny) == 0
    mine = difflab.load(tmp_path / "mine", device="cpu")  # a config's sampler overrides the recipe's
    assert (mine.default_sampler, mine.default_steps) == ("dpmpp_2m", 10) and mine.config["train"]["prediction"] == "flow"
    assert cli("train", "--data", "digits", "--out", tmp_path / "edm", "--recipe", "edm", "--noise", "uniform", *tiny) == 0
    cfg = config_of(tmp_path / "edm")["train"]
    assert cfg["prediction"] == "edm" and cfg["noise"] == "uniform" and cfg["weighting"] == "edm"
    capsys.readouterr()
    assert cli("train", "--data", "digits", "--out", tmp_path / "edm", "--recipe", "flow", "--resume", *tiny) == 2
    assert "--recipe applies to a new run" in capsys.readouterr().err


def test_folder_images_from_side_16_get_the_patch_network(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    net = {"channels": 8, "groups": 4, "num_heads": 2}  # the recipe's plan, narrower
    (tmp_path / "net.json").write_text(json.dumps({"network": net}))
    assert cli("train", "--data", tmp_path / "imgs", "--image-size", "16", "--out", tmp_path / "run", "--steps", "1",
               "--batch-size", "4", "--quiet", "--config", tmp_path / "net.json") == 0
    cfg = config_of(tmp_path / "run")
    unet = cfg["network"]["config"] if "config" in cfg.get("network", {}) else cfg["network"]
    assert unet["patch"] == 2 and unet["channels"] == 8 and unet["num_res_blocks"] == 2


def test_the_default_recipe_trains_and_samples_a_class_conditional_patch_run(tmp_path):
    """The recipe's batch 32 unless --batch-size is given; labels, CFG and sampling work through the patch stem."""
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    (tmp_path / "net.json").write_text(json.dumps({"network": {"channels": 8, "groups": 4, "num_heads": 2}}))
    run = tmp_path / "run"
    assert cli("train", "--data", tmp_path / "imgs", "--image-size", "16", "--channels", "1", "--conditional",
               "--out", run, "--steps", "1", "--quiet", "--config", tmp_path / "net.json") == 0
    cfg = config_of(run)
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["prediction"] == "flow"
    assert cli("sample", "--run", run, "--num", "3", "--steps", "2", "--label", "1", "--guidance-scale", "2",
               "--out", tmp_path / "s.npz") == 0
    x = np.load(tmp_path / "s.npz")
    arr = x[x.files[0]]
    assert arr.shape[0] == 3 and np.isfinite(arr).all()


@pytest.mark.parametrize("field, value, message", [("sampler", "bogus", "train.sampler 'bogus' is not a sampler"),
                                                   ("sample_steps", [1], "train.sample_steps a positive integer")])
def test_a_broken_default_sampler_in_config_is_one_line(tmp_path, capsys, field, value, message):
    run = tmp_path / "run"
    assert cli("train", "--data", "digits", "--out", run, "--steps", "1", "--batch-size", "8", "--quiet") == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"][field] = value
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert cli("sample", "--run", run, "--num", "2", "--out", tmp_path / "s.png") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "config.json" in err[0]
