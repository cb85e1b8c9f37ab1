"""The FID Inception network against pytorch-fid's, on the same random weights (the real ones are not in CI).

The reference needs ``pytorch-fid`` and torchvision's Python sources.  torchvision's wheels on PyPI are built for
CUDA torch and do not import beside a CPU build, so when ``import torchvision`` fails the test takes the
pure-Python ``torchvision/models/inception.py`` from an unpacked wheel named by ``DIFFLAB_TORCHVISION_SRC``
(the folder that holds ``torchvision/``) and never loads torchvision's compiled operators; without either it skips.
"""
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from difflab.evaluation import frechet_distance
from difflab.evaluation.features import EvaluationError
from difflab.evaluation.inception import ENV, FIDInception, load_inception


def _random_net(seed=0):
    """FIDInception with seeded random weights and batch-norm statistics calibrated on random images, so that
    activations keep a sensible scale through all 94 convolutions."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FIDInception()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative average over the calibration pass
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.normal_(m.bias, 0.0, 0.1)
        net.train()
        with torch.no_grad():
            net(torch.rand(3, 3, 16, 16) * 2 - 1)
    return net.eval()


def test_published_layer_structure():
    net = FIDInception()
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 23_850_960  # Inception-v3 without aux head, 1008 classes
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3) and sd["fc.weight"].shape == (1008, 2048)
    assert sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 2048)  # grey, any size: resized to 299


def _reference(monkeypatch):
    """pytorch_fid.inception, importing torchvision's Python sources only when torchvision itself does not load."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            monkeypatch.delitem(sys.modules, name)
        src = os.environ.get("DIFFLAB_TORCHVISION_SRC")
        if not src or not (Path(src) / "torchvision" / "models" / "inception.py").is_file():
            pytest.skip("torchvision does not import and DIFFLAB_TORCHVISION_SRC names no unpacked torchvision wheel")
        tv = types.ModuleType("torchvision")
        tv.__path__, tv.__version__ = [str(Path(src) / "torchvision")], "0.28.0"
        monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.delitem(sys.modules, "pytorch_fid.inception", raising=False)
    try:
        import pytorch_fid.inception as ref
    except ImportError as e:
        pytest.skip(f"pytorch-fid is not importable ({e})")
    return ref


def test_features_and_fid_match_pytorch_fid_on_random_weights(monkeypatch):
    ref_mod = _reference(monkeypatch)
    ours = _random_net()
    monkeypatch.setattr(ref_mod, "load_state_dict_from_url", lambda *a, **k: ours.state_dict())
    ref = ref_mod.InceptionV3([ref_mod.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True,
                              use_fid_inception=True).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 32, 32, generator=g) * 2 - 1  # difflab images in [-1, 1]
    y = (x + 0.3 * torch.randn(5, 3, 32, 32, generator=g)).clamp(-1, 1)
    x = torch.cat([x, y])
    with torch.no_grad():
        a = ours(x).double()
        b = ref((x + 1) / 2)[0].reshape(len(x), -1).double()  # pytorch-fid takes [0, 1]
    assert a.std() > 1e-2  # the random network does not collapse its features
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    from pytorch_fid.fid_score import calculate_frechet_distance

    fa, fb = a[:, :3].numpy(), b[:, :3].numpy()  # a few dimensions: 5 images give a full-rank covariance
    theirs = calculate_frechet_distance(fb[:5].mean(0), np.cov(fb[:5], rowvar=False), fb[5:].mean(0),
                                        np.cov(fb[5:], rowvar=False))
    assert theirs > 0
    assert frechet_distance(fa[:5], fa[5:]) == pytest.approx(theirs, rel=1e-4)


def test_weights_from_a_local_file_only(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(EvaluationError, match="--inception-weights PATH"):
        load_inception()
    with pytest.raises(EvaluationError, match="do not exist"):
        load_inception(tmp_path / "none.pth")
    net = FIDInception().eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    monkeypatch.setenv(ENV, str(tmp_path / "w.safetensors"))
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        want = net(x)
        assert torch.equal(load_inception()(x), want) and torch.equal(load_inception(tmp_path / "w.pth")(x), want)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(EvaluationError, match="do not fit the FID Inception network"):
        load_inception(tmp_path / "bad.pth")
    torch.save(types.SimpleNamespace(a=1), tmp_path / "code.pth")
    with pytest.raises(EvaluationError, match="not readable"):
        load_inception(tmp_path / "code.pth")  # a pickle of objects is refused, never executed
