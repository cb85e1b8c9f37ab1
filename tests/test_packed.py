"""Packed data (``difflab prepare-data``): the memory map gives the in-memory loader's examples and batches."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import TINY_UNET
from difflab.cli.main import main
from difflab.data import load
from difflab.data.packed import META, pack
from difflab.errors import DataError
from difflab.training import TrainConfig, train
from difflab.training.checkpoint import CHECKPOINT
from difflab.training.engine import batch_indices


def _folder(root, n=14):
    rng = np.random.default_rng(1)
    for i in range(n):
        d = root / ("cat" if i % 3 else "dog")
        d.mkdir(parents=True, exist_ok=True)
        shape = (11, 9, 3) if i % 4 else (10, 12)  # colour and grey files: grey ones broadcast to RGB
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i:03d}.png")
    (root / "dog" / "broken.png").write_bytes(b"not a png")


def _same(a, b):
    assert torch.equal(a.stored, b.stored) and torch.equal(a.y, b.y)
    assert a.class_names == b.class_names and a.shape == b.shape


def test_prepare_data_folder_round_trip(tmp_path):
    _folder(tmp_path / "imgs")
    with pytest.warns(UserWarning, match="broken.png"):
        assert main(["prepare-data", str(tmp_path / "imgs"), "--out", str(tmp_path / "packed"), "--image-size", "8",
                     "--workers", "3"]) == 0
    meta = json.loads((tmp_path / "packed" / META).read_text())
    assert meta["source"] == str(tmp_path / "imgs") and meta["shape"] == [3, 8, 8]
    for split in ("train", "test"):
        with pytest.warns(UserWarning, match="broken.png"):
            ref = load(str(tmp_path / "imgs"), split, image_size=8)
        _same(load(f"packed:{tmp_path / 'packed'}", split), ref)
        _same(load(str(tmp_path / "packed"), split), ref)  # the folder is recognised by its packed.json
    assert not list(tmp_path.glob(".packed.partial-*"))


def test_messy_folder_packs_like_it_loads(tmp_path):
    """Mixed modes and sizes, 16-bit, CMYK, a truncated JPEG and a corrupt PNG (skipped with warnings by both)."""
    from test_image_folder_cli import _messy_folder

    _messy_folder(tmp_path / "imgs")
    with pytest.warns(UserWarning) as record:
        pack(str(tmp_path / "imgs"), tmp_path / "p", ["train", "test", "all"], image_size=8, workers=2)
    messages = [str(w.message) for w in record]
    assert any("truncated.jpg" in m for m in messages) and any("corrupt.png" in m for m in messages)
    assert any("mixes 2 grayscale and 4 colour images" in m for m in messages)
    for split in ("train", "test", "all"):
        with pytest.warns(UserWarning):
            ref = load(str(tmp_path / "imgs"), split, image_size=8)
        _same(load(str(tmp_path / "p"), split), ref)
    assert sorted(q.name for q in (tmp_path / "p").iterdir()) == [
        "images-all.npy", "images-test.npy", "images-train.npy", "labels-all.npy", "labels-test.npy",
        "labels-train.npy", META]


def test_packed_batches_and_training_equal_in_memory(tmp_path):
    pack("digits", tmp_path / "d", ["train", "test", "all"])
    mem, packed = load("digits", "train"), load(f"packed:{tmp_path / 'd'}", "train")
    _same(packed, mem)
    _same(load(f"packed:{tmp_path / 'd'}", "all"), load("digits", "all"))
    for step in (0, 1, 7, 200):  # a step past the first epoch too
        idx = batch_indices(len(mem), 64, seed=3, step=step)
        for lo in (0, 32):  # what each of two processes reads: its half of the global batch
            assert torch.equal(packed.batch(idx[lo:lo + 32]), mem.batch(idx[lo:lo + 32]))
    cfg = TrainConfig.from_dict({"network": TINY_UNET, "batch_size": 8, "log_every": 2, "checkpoint_every": 10,
                                 "sample_steps": 2, "warmup_steps": 1, "schedule": {"kind": "linear", "T": 50},
                                 "steps": 3})
    train(cfg, mem, tmp_path / "mem", progress=False)
    train(cfg, packed, tmp_path / "packed", progress=False)
    a, b = load_file(str(tmp_path / "mem" / CHECKPOINT)), load_file(str(tmp_path / "packed" / CHECKPOINT))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prepare_data_errors(tmp_path, capsys):
    pack("digits", tmp_path / "d", ["train"])
    with pytest.raises(DataError, match="holds the splits train, not test"):
        load(f"packed:{tmp_path / 'd'}", "test")
    assert main(["prepare-data", "digits", "--out", str(tmp_path / "d")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["prepare-data", "toy:moons", "--out", str(tmp_path / "t")]) == 2
    assert "only image sets are packed" in capsys.readouterr().err and not (tmp_path / "t").exists()
    assert main(["prepare-data", "digits", "--out", str(tmp_path / "s"), "--splits", "train,val"]) == 2
    assert "unknown split val" in capsys.readouterr().err
    (tmp_path / "d" / META).write_text("{}")
    with pytest.raises(DataError, match="not a difflab packed-data description"):
        load(str(tmp_path / "d"))


_RSS_CHILD = """
import sys, torch
from difflab.data import load
from difflab.training.engine import batch_indices
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) * 1024
before = rss()
data = load('packed:' + sys.argv[1])
for step in range(5):
    data.batch(batch_indices(len(data), 64, seed=0, step=step)[:32])
print(rss() - before, data.stored.numel())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_packed_memory_does_not_grow_with_the_data(tmp_path):
    """A 400 MB packed set (a sparse file): opening it and drawing batches adds a few MB to a process."""
    n, shape = 100_000, (1, 64, 64)
    root = tmp_path / "big"
    root.mkdir()
    x = np.lib.format.open_memmap(root / "images-train.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
    del x  # never written: the file is sparse and costs no disk
    np.save(root / "labels-train.npy", np.zeros(n, np.int64))
    (root / META).write_text(json.dumps({"format": 1, "source": "synthetic", "shape": list(shape),
                                         "class_names": ["all"], "splits": {"train": {"shape": [n, *shape]}}}))
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(root)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    grown, size = map(int, r.stdout.split())
    assert size == n * 64 * 64
    assert grown < size / 8, f"RSS grew by {grown / 2**20:.0f} MB for a {size / 2**20:.0f} MB array"


def test_latents_stored_once_and_mapped_by_latent_runs(tmp_path):
    from difflab.training.autoencoder import load_autoencoder
    from difflab.training.latent import LatentDataset, encode_dataset

    (tmp_path / "ae.json").write_text(json.dumps({"network": {"channels": 8, "channel_mult": [1, 2], "groups": 4},
                                                  "batch_size": 16, "warmup_steps": 2}))
    assert main(["prepare-data", "digits", "--out", str(tmp_path / "d")]) == 0
    assert main(["train-autoencoder", "--data", f"packed:{tmp_path / 'd'}", "--out", str(tmp_path / "ae"), "--steps",
                 "2", "--config", str(tmp_path / "ae.json"), "--quiet"]) == 0
    assert main(["prepare-data", f"packed:{tmp_path / 'd'}", "--autoencoder", str(tmp_path / "ae"), "--device",
                 "cpu"]) == 0
    ae = load_autoencoder(tmp_path / "ae", device="cpu")
    data = load(f"packed:{tmp_path / 'd'}", "test")
    stored = encode_dataset(ae, data)
    assert not isinstance(stored, LatentDataset)  # mapped from latents-*.npy, not encoded again
    lazy = LatentDataset(ae, data)
    torch.testing.assert_close(stored.x, lazy.x, rtol=1e-5, atol=1e-5)  # batch composition only changes rounding
    assert isinstance(encode_dataset(ae, load("digits", "test")), LatentDataset)  # unpacked data: encoded lazily
    (tmp_path / "ldm.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2}))
    assert main(["train", "--data", f"packed:{tmp_path / 'd'}", "--autoencoder", str(tmp_path / "ae"), "--out",
                 str(tmp_path / "ldm"), "--steps", "2", "--config", str(tmp_path / "ldm.json"), "--quiet"]) == 0


_PEAK_CHILD = """
import sys, torch
from difflab.data import load
from difflab.evaluation.shards import evaluate_samples
from difflab.training import TrainConfig, train
def status(key):
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) * 1024
torch.set_num_threads(1)
data = load('packed:' + sys.argv[1])
net = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_levels": [], "groups": 4}
cfg = TrainConfig.from_dict({"network": net, "batch_size": 8, "log_every": 10, "checkpoint_every": 10, "steps": 1,
                             "sample_steps": 1, "schedule": {"kind": "linear", "T": 50}})
samples = torch.rand(64, 1, 8, 8) * 2 - 1
evaluate_samples(samples, load('digits'), 'train', 'digits')  # warm up the code paths on a small in-memory set
train(cfg, load('digits'), sys.argv[2] + '-warm', progress=False)
before, file_before = status('VmHWM'), status('RssFile')
train(cfg, data, sys.argv[2], progress=False)  # training start (and one step, checkpoint, preview)
after_train = status('VmHWM')
m = evaluate_samples(samples, data, 'train', 'digits', ref_num=1000)  # reference statistics of the packed set
# pages of the memory map that reads fault in are file-backed RSS (the page cache), not a copy: not counted
print(after_train - before, status('VmHWM') - before - (status('RssFile') - file_before), data.stored.numel(),
      int(m['num_reference']))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_training_start_and_reference_statistics_never_load_a_packed_set_whole(tmp_path):
    """A 128 MB packed set (sparse; 512 MB as float32): training one step on it and computing evaluation reference
    statistics (a 1000-image subset) raise the peak RSS, less the mapped file pages, by far less than the set; one
    float copy of it (``Dataset.x``) would add 512 MB."""
    n, shape = 2_000_000, (1, 8, 8)
    root = tmp_path / "big"
    root.mkdir()
    np.lib.format.open_memmap(root / "images-train.npy", mode="w+", dtype=np.uint8, shape=(n, *shape)).flush()
    np.save(root / "labels-train.npy", np.zeros(n, np.int64))
    (root / META).write_text(json.dumps({"format": 1, "source": "synthetic", "shape": list(shape),
                                         "class_names": None, "splits": {"train": {"shape": [n, *shape]}}}))
    r = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(root), str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    train_growth, growth, size, num_reference = map(int, r.stdout.split()[-4:])
    assert size == n * 64 and num_reference == 1000
    assert growth < size / 2, (f"peak RSS grew by {growth / 2**20:.0f} MB (training: {train_growth / 2**20:.0f} MB) "
                               f"for a {size / 2**20:.0f} MB packed set")


def test_size_and_color_over_a_packed_set_map_per_batch_and_equal_the_eager_wrappers(tmp_path):
    from difflab.data import MappedDataset

    pack("digits", tmp_path / "d", ["train", "test"])
    root = f"packed:{tmp_path / 'd'}"
    idx = torch.tensor([5, 0, 17, 3, 299, 17])  # the test split holds 300
    for wrap in ("size:4:", "size:5:", "color:", "color:size:4:", "size:5:color:"):
        for split in ("train", "test"):
            lazy, eager = load(wrap + root, split), load(wrap + "digits", split)
            assert isinstance(lazy, MappedDataset) and not isinstance(eager, MappedDataset)
            assert lazy.shape == eager.shape and len(lazy) == len(eager) and torch.equal(lazy.y, eager.y)
            assert torch.equal(lazy.batch(idx), eager.batch(idx))  # the same colours per row as the whole set's
            assert torch.equal(lazy.x, eager.x) and torch.equal(lazy.stored, eager.stored)
    with pytest.raises(DataError, match="size 9 is larger than the images"):
        load("size:9:" + root)
    pack("color:digits", tmp_path / "c", ["train"])
    with pytest.raises(DataError, match="color: needs grayscale images, got 3 channels"):
        load(f"color:packed:{tmp_path / 'c'}")
