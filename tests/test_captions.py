"""Captioned image folders: metadata.jsonl, metadata.csv and sidecar .txt captions; missing and extra entries."""
import json

import numpy as np
import pytest
from PIL import Image

from difflab.data import load
from difflab.errors import DataError


def images(root, names, size=8):
    """Write grey PNGs ``names`` (paths relative to root) whose mean grey level is their index times 20."""
    for i, n in enumerate(names):
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size), 20 * i, np.uint8)).save(p)


def caption_of(data, grey):
    """The captions of the example whose mean level is ``grey`` (images are written with distinct levels)."""
    levels = data.stored.float().mean((1, 2, 3)).round().long().tolist()
    return data.captions[levels.index(grey)]


def test_jsonl_captions_follow_their_images_through_the_split(tmp_path):
    names = [f"img{i}.png" for i in range(10)]
    images(tmp_path, names)
    rows = [{"file_name": n, "text": f"caption {i}"} for i, n in enumerate(names)]
    rows[3]["text"] = ["first of three", "second of three"]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    rows.append({"file_name": "img3.png", "text": "third of three"})  # a second row for one file adds a caption
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    everything = load(str(tmp_path), "all", image_size=8)
    assert caption_of(everything, 60) == ("first of three", "second of three", "third of three")
    assert caption_of(everything, 100) == ("caption 5",)
    train, test = load(str(tmp_path), "train", image_size=8), load(str(tmp_path), "test", image_size=8)
    assert len(train.captions) == len(train) == 9 and len(test.captions) == 1
    for part in (train, test):
        for level, caps in zip(part.stored.float().mean((1, 2, 3)).round().long().tolist(), part.captions):
            i = level // 20
            assert caps == (("first of three", "second of three", "third of three") if i == 3 else (f"caption {i}",))


def test_csv_captions_with_class_subfolders(tmp_path):
    names = ["a/x.png", "a/y.png", "b/z.png"]
    images(tmp_path, names)
    (tmp_path / "metadata.csv").write_text('file_name,text\na/x.png,"red, bright"\na/y.png,blue\nb/z.png,green\n'
                                           "a/y.png,dark blue\n")
    d = load(str(tmp_path), "all", image_size=8)
    assert d.class_names == ["a", "b"] and d.y.tolist() == [0, 0, 1]
    assert d.captions == [("red, bright",), ("blue", "dark blue"), ("green",)]


def test_sidecar_txt_captions_one_per_line(tmp_path):
    images(tmp_path, ["p.png", "q.png"])
    (tmp_path / "p.txt").write_text("a red bar\n\n  a crimson bar  \n")
    (tmp_path / "q.txt").write_text("a blue bar\n")
    d = load(str(tmp_path), "all", image_size=8)
    assert d.captions == [("a red bar", "a crimson bar"), ("a blue bar",)]
    d2 = load(f"size:4:{tmp_path}", "all", image_size=8)  # wrappers keep the captions
    assert d2.captions == d.captions and d2.shape == (1, 4, 4)


def test_a_folder_without_captions_has_none(tmp_path):
    images(tmp_path, ["p.png", "q.png"])
    assert load(str(tmp_path), "all", image_size=8).captions is None


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_missing_and_extra_metadata_entries_name_the_file(tmp_path, kind):
    images(tmp_path, ["p.png", "q.png"])
    meta = tmp_path / f"metadata.{kind}"

    def write(entries):
        if kind == "jsonl":
            meta.write_text("".join(json.dumps({"file_name": n, "text": "t"}) + "\n" for n in entries))
        else:
            meta.write_text("file_name,text\n" + "".join(f"{n},t\n" for n in entries))

    write(["p.png"])
    with pytest.raises(DataError, match=rf"metadata\.{kind}: no caption for image q\.png$"):
        load(str(tmp_path), "all", image_size=8)
    write(["p.png", "q.png", "gone.png"])
    with pytest.raises(DataError, match=rf"metadata\.{kind}: caption for gone\.png, which is not an image"):
        load(str(tmp_path), "all", image_size=8)


def test_metadata_format_errors(tmp_path):
    images(tmp_path, ["p.png"])
    meta = tmp_path / "metadata.jsonl"
    meta.write_text('{"file_name": "p.png", "caption": "x"}\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl line 1: needs the keys file_name and text"):
        load(str(tmp_path), "all", image_size=8)
    meta.write_text('{"file_name": "p.png", "text": ""}\n')
    with pytest.raises(DataError, match=r"line 1: text of p\.png must be a non-empty string"):
        load(str(tmp_path), "all", image_size=8)
    meta.write_text("not json\n")
    with pytest.raises(DataError, match=r"metadata\.jsonl line 1: not JSON"):
        load(str(tmp_path), "all", image_size=8)
    (tmp_path / "metadata.csv").write_text("file_name,text\np.png,x\n")
    with pytest.raises(DataError, match="has both metadata.jsonl and metadata.csv"):
        load(str(tmp_path), "all", image_size=8)
    meta.unlink()
    (tmp_path / "metadata.csv").write_text("name,caption\np.png,x\n")
    with pytest.raises(DataError, match="header must name the columns file_name and text"):
        load(str(tmp_path), "all", image_size=8)


def test_missing_and_extra_sidecars_name_the_file(tmp_path):
    images(tmp_path, ["p.png", "q.png"])
    (tmp_path / "p.txt").write_text("a red bar\n")
    with pytest.raises(DataError, match=r"q\.png has no caption file q\.txt beside it"):
        load(str(tmp_path), "all", image_size=8)
    (tmp_path / "q.txt").write_text("a blue bar\n")
    (tmp_path / "stray.txt").write_text("no image\n")
    with pytest.raises(DataError, match=r"caption file .*stray\.txt has no image beside it"):
        load(str(tmp_path), "all", image_size=8)
    (tmp_path / "stray.txt").unlink()
    (tmp_path / "q.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"caption file .*q\.txt is empty"):
        load(str(tmp_path), "all", image_size=8)
