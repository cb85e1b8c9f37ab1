"""`difflab train` / `sample` on an image folder as users have them: mixed modes and sizes, broken files."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from difflab.cli.main import main


def run(*args):
    return main([str(a) for a in args])


def _messy_folder(root):
    rng = np.random.default_rng(0)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)).save(root / "a" / "gray_small.png")  # upscaled
    Image.fromarray(rng.integers(0, 256, (20, 12, 4), dtype=np.uint8)).save(root / "a" / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).convert("P").save(root / "a" / "palette.gif")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "b" / "photo.jpg")
    Image.fromarray(rng.integers(0, 65536, (10, 10), dtype=np.uint16)).save(root / "b" / "deep.png")  # 16-bit
    Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "CMYK").save(root / "b" / "cmyk.jpg")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "b" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    corrupt = bytearray(buf.getvalue())
    corrupt[100:300] = bytes(v ^ 0x55 for v in corrupt[100:300])  # inside the compressed pixel data
    (root / "a" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "a" / "notes.txt").write_text("not an image")


def test_train_and_sample_on_a_messy_folder(tmp_path, tiny_config):
    _messy_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    with pytest.warns(UserWarning) as record:
        assert run("train", "--data", tmp_path / "imgs", "--image-size", 8, "--out", out, "--steps", 3,
                   "--config", tiny_config("unet", batch_size=4), "--quiet") == 0
    messages = [str(w.message) for w in record]
    assert any("truncated.jpg" in m for m in messages) and any("corrupt.png" in m for m in messages)
    assert any("mixes 2 grayscale and 4 colour images" in m for m in messages)  # gray_small.png and deep.png
    rc = json.loads((out / "config.json").read_text())
    assert rc["shape"] == [3, 8, 8] and rc["class_names"] == ["a", "b"]
    assert run("sample", "--run", out, "--num", 5, "--steps", 2, "--out", tmp_path / "s.npz") == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (5, 8, 8, 3) and f["images"].dtype == np.uint8


def test_refused_folder_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "cats" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "imgs" / "stray.png")
    assert run("train", "--data", tmp_path / "imgs", "--out", tmp_path / "run", "--steps", 1) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stray.png lies beside the class sub-folders (cats)" in err
    assert not (tmp_path / "run").exists()
