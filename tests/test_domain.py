"""Data domains: images are clamped while sampling and latents never; writing PNG and NPZ; the grid key."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflab.data import Dataset
from difflab.data.domain import ImageDomain, LatentDomain, PointDomain, domain_of
from difflab.errors import UserError
from difflab.models.denoiser import Clamped, Thresholded


class Wild(torch.nn.Module):
    """A 'denoiser' whose x_0 prediction leaves [-1, 1]: 3 x."""

    schedule = None

    def forward(self, x, t, cond=None):
        return 3.0 * x


def test_domain_of_runs_and_data():
    assert isinstance(domain_of(SimpleNamespace(shape=(1, 8, 8), latent=False)), ImageDomain)
    latent = domain_of(SimpleNamespace(shape=(4, 2, 2), latent=True, decode=lambda z: z[:, :1]))
    assert isinstance(latent, LatentDomain) and latent.to_data(torch.ones(2, 4, 2, 2)).shape == (2, 1, 2, 2)
    assert isinstance(domain_of(Dataset(torch.zeros(3, 2), None, "pts")), PointDomain)
    assert isinstance(domain_of(Dataset(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), None, "img")), ImageDomain)
    assert (ImageDomain((1, 8, 8)).network, PointDomain((2,)).network) == ("unet", "mlp")


def test_images_are_clamped_latents_and_points_never():
    x, t = torch.linspace(-1, 1, 32).reshape(2, 1, 4, 4), torch.zeros(2)
    img = ImageDomain((1, 4, 4)).denoiser(Wild())
    assert isinstance(img, Clamped) and float(img(x, t).abs().max()) == 1.0
    assert isinstance(ImageDomain((1, 4, 4)).denoiser(Wild(), threshold=0.9), Thresholded)
    assert not isinstance(ImageDomain((1, 4, 4)).denoiser(Wild(), no_clip=True), Clamped)
    for d in (LatentDomain((1, 4, 4)), PointDomain((2,))):
        m = Wild()
        assert d.denoiser(m) is m and float(d.denoiser(m)(x, t).abs().max()) == 3.0
        assert d.denoised_mode() == "none"
        with pytest.raises(UserError, match="never thresholded"):
            d.denoised_mode(threshold=0.9)
    assert ImageDomain((1, 4, 4)).denoised_mode() == "clip"
    assert ImageDomain((1, 4, 4)).denoised_mode(threshold=0.995) == "threshold:0.995"


def test_write_npz_and_png(tmp_path):
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 1, 2, 2)
    ImageDomain((1, 2, 2)).write(x, tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as f:
        assert f["images"].dtype == np.uint8 and f["images"].reshape(-1).tolist() == [0, 128, 255, 255]
    pts = torch.tensor([[0.5, -2.5]])
    PointDomain((2,)).write(pts, tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        assert np.array_equal(f["samples"], pts.numpy())
    LatentDomain((1, 2, 2), decode=lambda z: -z).write(x, tmp_path / "l.npz")  # decoded before writing
    with np.load(tmp_path / "l.npz") as f:
        assert f["images"].reshape(-1).tolist() == [255, 128, 0, 0]
    ImageDomain((1, 2, 2)).write(x.repeat(4, 1, 1, 1), tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="must end in .png or .npz"):
        PointDomain((2,)).write(pts, tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()
