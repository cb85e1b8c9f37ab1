"""Inception-v3 pool features as FID is computed in papers: the network of the 2015-12-05 TensorFlow weights.

This is the variant pytorch-fid uses (Heusel et al. 2017; Seitzer, pytorch-fid): Inception-v3 (Szegedy et al. 2016)
with 1008 classes, average pools that do not count the padding, and a max pool in the last block's pool branch.
Images in [-1, 1] are mapped to [0, 1], resized to 299 x 299 bilinearly (half-pixel centres, no antialiasing),
mapped back to [-1, 1], and the 2048 channels after the final global average pool are the features.  Parameter
names follow the published state dict, so ``pt_inception-2015-12-05-6726825d.pth`` loads as it is; weights are
read only from a local file (``--inception-weights PATH`` or ``DIFFLAB_INCEPTION_WEIGHTS``), never downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import EvaluationError

ENV = "DIFFLAB_INCEPTION_WEIGHTS"
SIZE = 299
DIM = 2048


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU: Inception-v3's unit."""

    def __init__(self, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor) -> Tensor:
    """3x3 average pool, stride 1, that averages only the pixels inside the image (the TF graph's pooling)."""
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class MixedA(nn.Module):
    """35 x 35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x))], 1)


class ReduceB(nn.Module):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):
    """17 x 17 block (Mixed_6b..6e): factorised 7x7 convolutions with c7 inner channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = Conv(c7, c7, (7, 1), padding=(3, 0)), Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, (7, 1), padding=(3, 0)), Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class ReduceD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = Conv(192, 192, (7, 1), padding=(3, 0)), Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):
    """8 x 8 block (Mixed_7b, 7c) with split 1x3 / 3x1 branches; ``max_pool``: the last block pools by max."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), padding=(0, 1)), Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Images [N, C, H, W] in [-1, 1] (C = 1 or 3, any size) -> pool features [N, 2048] (float32)."""

    input_shape = None  # any size: resized to 299 x 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, stride=2), Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = Conv(64, 80, 1), Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = MixedA(192, 32), MixedA(256, 64), MixedA(288, 64)
        self.Mixed_6a = ReduceB(288)
        self.Mixed_6b, self.Mixed_6c = MixedC(768, 128), MixedC(768, 160)
        self.Mixed_6d, self.Mixed_6e = MixedC(768, 160), MixedC(768, 192)
        self.Mixed_7a = ReduceD(768)
        self.Mixed_7b, self.Mixed_7c = MixedE(1280, max_pool=False), MixedE(2048, max_pool=True)
        self.fc = nn.Linear(DIM, 1008)  # ImageNet logits of the TF graph: kept so the published file loads whole

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1] -> bilinear 299 x 299 -> [-1, 1], grey repeated to RGB (pytorch-fid's input path)."""
        x = (x.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise EvaluationError(f"Inception features need images [N, 1 or 3, H, W], got {tuple(x.shape)}")
        x = self.prepare(x.to(self.fc.weight.device))
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def weights_path(path: str | Path | None = None) -> Path:
    """The weights file: ``path``, else $DIFFLAB_INCEPTION_WEIGHTS; a missing one is an EvaluationError."""
    path = path or os.environ.get(ENV)
    if not path:
        raise EvaluationError(f"--features inception needs the 2015-12-05 Inception weights as a local file: pass "
                              f"--inception-weights PATH (e.g. pt_inception-2015-12-05-6726825d.pth) or set {ENV}")
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"Inception weights {p} do not exist (--inception-weights or {ENV})")
    return p


def read_state_dict(path: Path, what: str = "Inception weights") -> dict[str, Tensor]:
    """A state dict from .safetensors, or from a .pth/.pt file of plain tensors (torch.load weights_only: no code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable or unsafe file: one line naming it
        raise EvaluationError(f"{what} {path} are not readable ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise EvaluationError(f"{what} {path} hold a {type(state).__name__}, not a state dict")
    return state


def load_inception(path: str | Path | None = None, device: torch.device | str | None = None) -> FIDInception:
    """FIDInception with the weights of a local file (see :func:`weights_path`), in eval mode."""
    p = weights_path(path)
    net = FIDInception()
    try:
        net.load_state_dict(read_state_dict(p))
    except RuntimeError as e:
        raise EvaluationError(f"Inception weights {p} do not fit the FID Inception network "
                              f"({str(e).splitlines()[1].strip()[:200] if len(str(e).splitlines()) > 1 else e})") from None
    return net.eval().to(device or "cpu")


__all__ = ["FIDInception", "load_inception", "weights_path", "read_state_dict", "ENV", "DIM"]
