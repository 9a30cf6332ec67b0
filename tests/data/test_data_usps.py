"""USPS: the libsvm-format reader on a fixture in the published format, locating the files
like the other named datasets, and the checksum-checked download."""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from _usps import usps_images, usps_line, write_usps_file, write_usps_root
from permerge.data import load_dataset, locate, readers
from permerge.errors import DataError


def test_reader_values_labels_and_shape(tmp_path: Path) -> None:
    values = np.zeros((3, 256))
    values[0, :] = -1.0  # background
    values[1, :] = 1.0  # ink
    values[2, 17] = 0.5  # one pixel, the rest 0 (mid grey)
    path = write_usps_file(tmp_path / "usps.bz2", values, np.array([9, 0, 4]))
    x, y = readers.read_usps(path)
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.uint8
    assert y.tolist() == [9, 0, 4]  # labels 10, 1, 5 in the file
    assert int(x[0].max()) == 0 and int(x[1].min()) == 255
    # torchvision's conversion: uint8((v + 1) / 2 * 255) in float32, truncated
    assert int(x[2, 0, 1, 1]) == int(np.float32(1.5) / 2 * 255) == 191
    assert int(x[2, 0, 0, 0]) == 127


def test_reader_sparse_line_and_plain_text(tmp_path: Path) -> None:
    """libsvm's sparse form (indices left out are 0) and an uncompressed file both read."""
    p = tmp_path / "usps"
    p.write_text("3 1:1 256:-1 \n7 2:0.25\n")
    x, y = readers.read_usps(p)
    assert y.tolist() == [2, 6]
    assert int(x[0, 0, 0, 0]) == 255 and int(x[0, 0, 15, 15]) == 0 and int(x[0, 0, 5, 5]) == 127


def test_reader_matches_fixture_pixels(tmp_path: Path) -> None:
    values, digits = usps_images(3, seed=5)
    x, y = readers.read_usps(write_usps_file(tmp_path / "usps.bz2", values, digits))
    expected = ((values.astype(np.float32) + 1) / 2 * 255).astype(np.uint8).reshape(-1, 1, 16, 16)
    assert np.array_equal(x.numpy(), expected) and np.array_equal(y.numpy(), digits)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("11 1:0 \n", "line 1: label 11 out of range 1-10"),
        ("0 1:0 \n", "label 0 out of range 1-10"),
        ("x 1:0 \n", "not a libsvm line"),
        ("3 300:0.5 \n", "feature index 300 out of range 1-256"),
        ("3 5:2.5 \n", "pixel value 2.5 outside [-1, 1]"),
        ("3 5:nan \n", "pixel value nan outside [-1, 1]"),
        ("3 5=0.1 \n", "not a libsvm feature"),
    ],
)
def test_reader_rejects_bad_lines(tmp_path: Path, line: str, needle: str) -> None:
    p = tmp_path / "usps.bz2"
    p.write_bytes(bz2.compress(usps_line(1, np.zeros(256)).encode() + line.encode()))
    with pytest.raises(DataError) as e:
        readers.read_usps(p)
    msg = str(e.value)
    assert str(p) in msg and needle.replace("line 1", "line 2") in msg and "\n" not in msg


def test_reader_empty_and_corrupt(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(DataError, match="holds no images"):
        readers.read_usps(tmp_path / "empty")
    (tmp_path / "cut.bz2").write_bytes(bz2.compress(b"1 1:0 \n" * 100)[:30])
    with pytest.raises(DataError, match="corrupt or truncated bzip2"):
        readers.read_usps(tmp_path / "cut.bz2")


@pytest.mark.parametrize("folder", ["usps", "USPS", "."])
def test_named_dataset_in_data_root(tmp_path: Path, folder: str, clear_dataset_cache: None) -> None:
    """Found in <root>/usps/ (the usual layout), <root>/USPS/ or <root> itself (torchvision)."""
    root = write_usps_root(tmp_path / "root", 4, 2, folder=folder)
    tr = load_dataset("usps", "train", data_root=root)
    te = load_dataset("usps", "test", data_root=root)
    assert (len(tr), len(te)) == (40, 20) and tr.image_shape == (1, 16, 16)
    assert tr.class_counts().tolist() == [4] * 10 and tr.class_names[3] == "3"


def test_found_through_permerge_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clear_dataset_cache: None
) -> None:
    monkeypatch.setenv("PERMERGE_DATA", str(write_usps_root(tmp_path / "env", 2, 1)))
    assert len(load_dataset("usps@2", "train")) == 20


def test_missing_lists_where_it_looked(tmp_path: Path, clear_dataset_cache: None) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("usps", "train", data_root=tmp_path)
    msg = str(e.value)
    assert "usps (train) not found" in msg and str(tmp_path / "usps") in msg and "PERMERGE_OFFLINE" in msg


def test_published_checksums() -> None:
    """The MD5s of the libsvm page's files (as torchvision lists them)."""
    src = locate.SOURCES["usps"]
    assert src.md5 == {"usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197", "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118"}
    assert src.mirrors == ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/",)


def test_download_checks_md5(tmp_path: Path, permerge_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = write_usps_root(tmp_path / "mirror", 2, 1) / "usps"
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in mirror.iterdir()}
    good = dataclasses.replace(locate.SOURCES["usps"], system_dirs=(), mirrors=(mirror.as_uri() + "/",), md5=md5)
    monkeypatch.setitem(locate.SOURCES, "usps", good)
    files = locate.locate("usps", "test", tmp_path / "nowhere", allow_download=True)
    assert files == [permerge_cache / "usps" / "usps.t.bz2"]
    bad = dataclasses.replace(good, md5={k: "0" * 32 for k in md5})
    monkeypatch.setitem(locate.SOURCES, "usps", bad)
    for f in (permerge_cache / "usps").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="checksum mismatch"):
        locate.locate("usps", "train", tmp_path / "nowhere", allow_download=True)
    assert list((permerge_cache / "usps").iterdir()) == []
