import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.data import TOYS, Dataset, load, to_uint8, to_unit, toy
from difflab.errors import DataError


def test_digits_scaled_split_and_labelled():
    tr, te = load("digits", "train"), load("digits", "test")
    assert tr.shape == (1, 8, 8) and len(tr) + len(te) == 1797
    assert tr.x.min() == -1 and tr.x.max() == 1
    assert len(torch.unique(tr.x)) == 17  # 17 grey levels kept
    assert set(tr.y.tolist()) == set(range(10)) and tr.num_classes == 10
    all_ = load("digits", "all").x
    # the split is a partition and is the same every time
    assert torch.equal(torch.sort(torch.cat([tr.x, te.x]).flatten(1), 0).values, torch.sort(all_.flatten(1), 0).values)
    assert torch.equal(load("digits", "test").x, te.x)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys(name):
    a, b = toy(name, 4000, seed=3), toy(name, 4000, seed=3)
    assert a.shape == (4000, 2) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, toy(name, 4000, seed=4))
    assert np.abs(a).max() < 1.6 and 0.2 < a.std() < 0.8
    assert np.abs(a[:500].mean(0) - a.mean(0)).max() < 0.1  # shuffled: any slice is a fair sample
    d = load(f"toy:{name}")
    assert d.kind == "points" and d.y is None


def _write_idx(path, arr, gz=True):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz,dotted", [(True, True), (False, False)])
def test_mnist_idx_reader(tmp_path, gz, dotted):
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    ext = ".gz" if gz else ""
    sep = "." if dotted else "-"
    for split in ("train", "t10k"):
        _write_idx(tmp_path / f"{split}-images{sep}idx3-ubyte{ext}", imgs, gz)
        _write_idx(tmp_path / f"{split}-labels{sep}idx1-ubyte{ext}", labels, gz)
    d = load(f"mnist:{tmp_path}", "test")
    assert d.shape == (1, 28, 28) and d.y.tolist() == labels.tolist()
    assert np.array_equal(to_uint8(d.x)[..., 0], imgs)
    assert len(load(f"mnist:{tmp_path}", "all")) == 10


def test_mnist_truncated_file_is_named(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5), gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        load(f"mnist:{tmp_path}", "test")
    with pytest.raises(DataError, match="does not exist"):
        load(f"mnist:{tmp_path / 'nowhere'}")


def test_image_folder_resizes_crops_labels_and_skips_corrupt(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    Image.fromarray(np.full((40, 20, 3), 200, np.uint8)).save(tmp_path / "cats" / "a.png")
    Image.fromarray(np.full((10, 30), 50, np.uint8)).convert("RGB").save(tmp_path / "dogs" / "b.jpg")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "dogs" / "c.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="broken.png"):
        d = load(str(tmp_path), "all", image_size=12)
    assert d.shape == (3, 12, 12) and len(d) == 3
    assert d.class_names == ["cats", "dogs"] and sorted(d.y.tolist()) == [0, 1, 1]
    u = to_uint8(d.x)
    assert u[0].min() == u[0].max() == 200  # a flat image stays flat after resize + crop


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="missing: no such file or directory"):
        load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG/JPEG"):
        load(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="none of its 1 image files"):
        load(str(tmp_path / "bad"))


def test_unknown_specs():
    with pytest.raises(DataError, match="unknown toy"):
        load("toy:spiral_galaxy")
    with pytest.raises(DataError, match="mnist:DIR"):
        load("mnist")


def test_images_stored_as_uint8_and_converted_per_batch_exactly():
    d = load("digits", "train")
    n = len(d)
    assert d.stored.dtype == torch.uint8 and d.stored.shape == (n, 1, 8, 8)
    assert d.stored.untyped_storage().nbytes() == n * 64  # one byte per pixel, a quarter of float32
    idx = torch.tensor([5, 0, 5, n - 1])
    old = to_unit(d.stored.permute(0, 2, 3, 1).numpy())  # the float conversion images were stored as before
    assert d.batch(idx).dtype == torch.float32
    assert torch.equal(d.batch(idx), old[idx]) and torch.equal(d.x, old)
    # every byte value maps as to_unit maps it, and to_uint8 brings it back
    every = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)
    e = Dataset(every, None, "bytes")
    assert torch.equal(e.batch(torch.arange(4)), to_unit(every.permute(0, 2, 3, 1).numpy()))
    assert np.array_equal(to_uint8(e.x), every.permute(0, 2, 3, 1).numpy())


def test_float_and_point_datasets_are_kept_as_given():
    pts = torch.randn(10, 2, dtype=torch.float64)
    p = Dataset(pts, None, "pts")
    assert p.kind == "points" and p.shape == (2,) and p.stored.dtype == torch.float32
    assert torch.equal(p.batch(torch.tensor([3, 1])), pts.float()[[3, 1]]) and p.x is p.stored
    img = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)  # off the 1/127.5 grid: not quantised
    f = Dataset(img, torch.tensor([0, 1]), "float images", ["a", "b"])
    assert f.kind == "image" and torch.equal(f.x, img) and torch.equal(f.batch(torch.tensor([1])), img[1:])
    with pytest.raises(DataError, match="uint8 data must be images"):
        Dataset(torch.zeros(3, 2, dtype=torch.uint8), None, "bad")
    with pytest.raises(DataError, match="3 examples but 2 labels"):
        Dataset(torch.zeros(3, 2), torch.zeros(2), "bad")
    with pytest.raises(DataError, match="int64"):
        Dataset(torch.zeros(3, 2, dtype=torch.int64), None, "bad")
