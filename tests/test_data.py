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
    # every toy lies mostly within [-1, 1] except the 25-Gaussian grid, kept at the literature's scale (centres
    # GRID_SPACING apart on a 5 x 5 grid), which is the same bound scaled by GRID_SPACING / 0.4
    from difflab.data.toy import GRID_SPACING

    scale = GRID_SPACING / 0.4 if name == "25gaussians" else 1.0
    assert np.abs(a).max() < 1.6 * scale and 0.2 * scale < a.std() < 0.8 * scale
    assert np.abs(a[:500].mean(0) - a.mean(0)).max() < 0.1 * scale  # shuffled: any slice is a fair sample
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


def test_image_folder_decodes_in_threads_into_one_array_skipping_unreadable_rows(tmp_path):
    from difflab.data.images import image_folder

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "000_broken.png").write_bytes(b"\x89PNG not really")  # sorts first: its header does not open
    for i in range(1, 40):
        _flat(tmp_path / "ab"[i % 2] / f"{i:03d}.png", 5 * i)
    (tmp_path / "b" / "020_broken.png").write_bytes(b"garbage")
    runs = []
    for workers in (1, 4):
        kept: list = []
        with pytest.warns(UserWarning, match="broken"):
            x, y, classes = image_folder(tmp_path, 4, kept=kept, workers=workers)
        runs.append((x, y, kept))
        assert x.shape == (39, 1, 4, 4) and classes == ["a", "b"]  # grey: one channel, the broken rows dropped
        want = sorted(range(1, 40), key=lambda i: (i % 2, i))  # class folder a (even) first, then b, by name
        assert x[:, 0, 0, 0].tolist() == [5 * i for i in want] and y.tolist() == [i % 2 for i in want]
        assert [p.name for p in kept] == [f"{i:03d}.png" for i in want]
    assert np.array_equal(runs[0][0], runs[1][0])  # the threads change nothing


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


def _flat(path, value, size=(6, 6), mode="L"):
    """A flat image of one value (a byte, an (r, g, b) triple or a 16-bit level)."""
    shape = size + ((3,) if mode == "RGB" else ())
    dtype = np.uint16 if mode == "I;16" else np.uint8
    Image.fromarray(np.full(shape, value, dtype)).save(path)


def test_mixed_grayscale_and_colour_folder_loads_as_rgb(tmp_path):
    _flat(tmp_path / "a_gray.png", 50)  # sorts first
    _flat(tmp_path / "b_red.png", (200, 10, 30), mode="RGB")
    with pytest.warns(UserWarning, match=r"1 grayscale and 1 colour.*3 channels \(RGB\)"):
        d = load(str(tmp_path), "all", image_size=4)
    assert d.shape == (3, 4, 4)
    u = to_uint8(d.x)
    assert u[0].reshape(-1, 3).tolist() == [[50, 50, 50]] * 16 and u[1].reshape(-1, 3).tolist() == [[200, 10, 30]] * 16
    gray = load(str(tmp_path), "all", image_size=4, channels=1)  # an explicit choice: no warning, luma
    assert gray.shape == (1, 4, 4) and to_uint8(gray.x)[1].max() == round(0.299 * 200 + 0.587 * 10 + 0.114 * 30)
    with pytest.raises(DataError, match="channels must be 1 or 3, got 2"):
        load(str(tmp_path), "all", channels=2)


def test_16_bit_png_scaled_by_bit_depth(tmp_path):
    for i, level in enumerate([0, 30000, 65535, 257 * 100 + 128]):
        _flat(tmp_path / f"{i}.png", level, mode="I;16")
    assert Image.open(tmp_path / "1.png").mode.startswith("I;16")
    d = load(str(tmp_path), "all", image_size=4)
    assert d.shape == (1, 4, 4)
    # 0..65535 onto 0..255: v * 255 / 65535 = v / 257, rounded
    assert to_uint8(d.x)[:, 0, 0, 0].tolist() == [0, round(30000 / 257), 255, 100]


def test_images_beside_class_folders_are_refused(tmp_path):
    (tmp_path / "cats").mkdir()
    _flat(tmp_path / "cats" / "a.png", 10)
    _flat(tmp_path / "stray.png", 20)
    with pytest.raises(DataError, match=r"stray\.png lies beside the class sub-folders \(cats\)"):
        load(str(tmp_path), "all")


@pytest.mark.parametrize("n", [2, 3, 5, 9, 10, 25])
def test_folder_split_is_a_seeded_partition_even_when_tiny(tmp_path, n):
    for i in range(n):
        _flat(tmp_path / f"{i:02d}.png", 3 * i)
    values = lambda split: sorted(to_uint8(load(str(tmp_path), split, image_size=4).x)[:, 0, 0, 0].tolist())
    train, test = values("train"), values("test")
    assert len(test) == max(1, round(0.1 * n)) and len(train) == n - len(test)
    assert not set(train) & set(test) and sorted(train + test) == values("all") == [3 * i for i in range(n)]
    assert values("test") == test  # the same every time


@pytest.mark.parametrize("n, block", [(1000, 7), (1000, 4096), (37, 1)])
def test_split_rows_are_kept_in_place_without_a_second_copy(n, block):
    from difflab.data import _keep_rows, _split

    x = np.random.default_rng(n).integers(0, 256, (n, 1, 2, 2), dtype=np.uint8)
    for split in ("train", "test"):
        idx = _split(n, split, test_fraction=0.1)
        want, buf = x[idx], x.copy()
        got = _keep_rows(buf, idx, block=block)
        assert np.array_equal(got, want) and np.shares_memory(got, buf)  # the rows of x[idx], in buf's own memory


def test_single_image_folder_trains_but_has_no_test_split(tmp_path):
    _flat(tmp_path / "only.png", 7)
    assert len(load(str(tmp_path), "train")) == 1 and len(load(str(tmp_path), "all")) == 1
    with pytest.raises(DataError, match="1 image.*no held-out test split"):
        load(str(tmp_path), "test")


def test_size_spec_shrinks_by_block_means():
    """size:N:SPEC gives N x N images: the rounded mean of K x K blocks (the SR stages' low-res input) when N
    divides the side, labels and split kept; the box filter otherwise; errors name the spec."""
    from difflab.data import shrink
    from difflab.errors import DataError

    full, small = load("digits", "test"), load("size:4:digits", "test")
    assert small.shape == (1, 4, 4) and small.stored.dtype == torch.uint8 and torch.equal(small.y, full.y)
    blocks = full.stored.double().reshape(-1, 1, 4, 2, 4, 2).mean((3, 5))
    assert (small.stored.double() - blocks).abs().max() <= 0.5
    assert load("size:3:digits", "test").shape == (1, 3, 3)
    assert torch.equal(shrink(torch.full((2, 3, 6, 6), 200, dtype=torch.uint8), 4), torch.full((2, 3, 4, 4), 200, dtype=torch.uint8))
    for spec, msg in (("size:x:digits", "integer side"), ("size:4:toy:moons", "applies to images"),
                      ("size:16:digits", "larger than the images"), ("size:4", "integer side")):
        with pytest.raises(DataError, match=msg):
            load(spec)
