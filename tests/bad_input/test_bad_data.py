"""Bad datasets end to end: broken IDX files in a data root, checksum failures, user npz /
folder data, impossible dataset specs. Each case must fail with one line naming the file or
spec and what is wrong with it."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from permerge import api
from permerge.data import load_dataset, locate
from permerge.errors import DataError

from ._helpers import api_error

N = 20


def _idx(array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


GOOD_X = _idx(np.zeros((N, 28, 28), np.uint8))
GOOD_Y = _idx(np.arange(N) % 10)


def fake_root(tmp_path: Path, images: bytes = GOOD_X, labels: bytes = GOOD_Y, gz: bool = False) -> Path:
    """A data root in torchvision layout (``MNIST/raw``) whose *training* files are the given
    bytes; the test files are valid, so only the broken part is to blame."""
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    (raw / f"train-images-idx3-ubyte{suffix}").write_bytes(images)
    (raw / f"train-labels-idx1-ubyte{suffix}").write_bytes(labels)
    (raw / "t10k-images-idx3-ubyte").write_bytes(GOOD_X)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(GOOD_Y)
    return tmp_path / "root"


# --- IDX files ------------------------------------------------------------------------

IDX_CASES = {
    "truncated-images": (GOOD_X[:-100], GOOD_Y, "train-images-idx3-ubyte: IDX size mismatch"),
    "extra-bytes": (GOOD_X + b"\x00" * 7, GOOD_Y, "train-images-idx3-ubyte: IDX size mismatch"),
    "wrong-magic": (b"\x08\x00\x08\x03" + GOOD_X[4:], GOOD_Y, "train-images-idx3-ubyte: not an IDX file (wrong magic"),
    "wrong-dtype": (b"\x00\x00\x0d\x03" + GOOD_X[4:], GOOD_Y, "not an IDX file (wrong magic 00000d03"),
    "empty-file": (b"", GOOD_Y, "train-images-idx3-ubyte: not an IDX file (wrong magic empty)"),
    "truncated-header": (GOOD_X[:9], GOOD_Y, "train-images-idx3-ubyte: truncated IDX header"),
    # crafted dimensions whose product overflows int64 (used to wrap to 0 and pass the check)
    "overflowing-dims": (bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 2**31), GOOD_Y, "IDX size mismatch"),
    "no-dims": (bytes([0, 0, 8, 0]), GOOD_Y, "train-images-idx3-ubyte: IDX header declares no dimensions"),
    "flat-images": (_idx(np.zeros((N, 784))), GOOD_Y, "expected N x H x W images and N labels"),
    "count-mismatch": (GOOD_X, _idx(np.arange(N - 5) % 10), f"{N} images but"),
    "label-out-of-range": (GOOD_X, _idx(np.full(N, 12)), "train-labels-idx1-ubyte: label 12 out of range 0-9"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_bad_idx_file(tmp_path: Path, case: str) -> None:
    images, labels, needle = IDX_CASES[case]
    root = fake_root(tmp_path, images, labels)
    msg = api_error(DataError, load_dataset, "mnist", "train", data_root=root)
    assert needle in msg
    assert str(root) in msg  # names the file


def test_truncated_gzip_idx(tmp_path: Path) -> None:
    root = fake_root(tmp_path, gzip.compress(GOOD_X)[:60], gzip.compress(GOOD_Y), gz=True)
    msg = api_error(DataError, load_dataset, "mnist", "train", data_root=root)
    assert "train-images-idx3-ubyte.gz: corrupt or truncated gzip file" in msg


def test_bad_idx_via_cli(tmp_path: Path, cli_error: Callable[..., str]) -> None:
    root = fake_root(tmp_path, GOOD_X[:-1])
    line = cli_error("train", "-d", "mnist", "--data-root", root, "-o", tmp_path / "out", "--epochs", "1", "-q")
    assert "train-images-idx3-ubyte: IDX size mismatch" in line
    assert not (tmp_path / "out").exists()


def test_empty_idx_dataset(tmp_path: Path) -> None:
    root = fake_root(tmp_path, _idx(np.zeros((0, 28, 28))), _idx(np.zeros(0)))
    assert "mnist: dataset is empty" in api_error(DataError, load_dataset, "mnist", "train", data_root=root)


# --- checksums (no network: file:// mirrors) -----------------------------------------------


def _md5(b: bytes) -> str:
    return hashlib.md5(b, usedforsecurity=False).hexdigest()


def _mirror(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in (
        ("train-images-idx3-ubyte.gz", GOOD_X),
        ("train-labels-idx1-ubyte.gz", GOOD_Y),
        ("t10k-images-idx3-ubyte.gz", GOOD_X),
        ("t10k-labels-idx1-ubyte.gz", GOOD_Y),
    ):
        (mirror / name).write_bytes(gzip.compress(data, mtime=0))
    return mirror


def test_download_checksum_mismatch(tmp_path: Path) -> None:
    mirror = _mirror(tmp_path)
    url = (mirror / "train-images-idx3-ubyte.gz").as_uri()
    dest = tmp_path / "cache" / "train-images-idx3-ubyte.gz"
    msg = api_error(DataError, locate.download, url, dest, "0" * 32)
    assert f"checksum mismatch for {url}: expected md5 {'0' * 32}" in msg
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # nothing half-trusted is left


def test_fetch_checksum_mismatch_via_cli(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    permerge_cache: Path,
    clear_dataset_cache: None,
    cli_error: Callable[..., str],
    tiny_pair: tuple[Path, Path],
) -> None:
    """A mirror serving files that do not match the published MD5s: the CLI says so, and the
    cache stays empty."""
    mirror = _mirror(tmp_path)
    src = dataclasses.replace(
        locate.SOURCES["mnist"],
        system_dirs=(),
        mirrors=(mirror.as_uri() + "/",),
        md5={k: "f" * 32 for k in locate.SOURCES["mnist"].md5},
    )
    monkeypatch.setitem(locate.SOURCES, "mnist", src)
    monkeypatch.setenv("PERMERGE_OFFLINE", "0")
    line = cli_error("eval", tiny_pair[0], "--datasets", "mnist", "--data-root", tmp_path / "nowhere")
    assert "mnist (test) not found" in line and "checksum mismatch" in line
    cached = permerge_cache / "MNIST" / "raw"
    assert not cached.exists() or list(cached.iterdir()) == []


def test_tampered_cache_file_is_rechecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, permerge_cache: Path, clear_dataset_cache: None
) -> None:
    """A cached file that does not match its MD5 is downloaded again, not trusted because it
    is already there."""
    mirror = _mirror(tmp_path)
    md5 = {f.name: _md5(f.read_bytes()) for f in mirror.iterdir()}
    src = dataclasses.replace(locate.SOURCES["mnist"], system_dirs=(), mirrors=(mirror.as_uri() + "/",), md5=md5)
    monkeypatch.setitem(locate.SOURCES, "mnist", src)
    cached = permerge_cache / "MNIST" / "raw"
    cached.mkdir(parents=True)
    tampered = gzip.compress(_idx(np.full((N, 28, 28), 255)), mtime=0)  # a valid file, wrong content
    (cached / "train-images-idx3-ubyte.gz").write_bytes(tampered)
    files = locate.locate("mnist", "train", tmp_path / "nowhere", allow_download=True)
    assert {locate.md5_of(f) for f in files} <= set(md5.values())
    assert (cached / "train-images-idx3-ubyte.gz").read_bytes() != tampered


# --- user npz / folder data ------------------------------------------------------------------


def _npz(tmp_path: Path, name: str = "d.npz", **arrays: np.ndarray) -> str:
    p = tmp_path / name
    np.savez(p, **arrays)  # type: ignore[arg-type]
    return f"npz:{p}"


NPZ_CASES: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "missing-labels": ({"images": np.zeros((10, 28, 28), np.uint8)}, "npz needs arrays 'images' and 'labels'"),
    "missing-images": ({"x_train": np.zeros((10, 28, 28)), "labels": np.arange(10)}, "has ['labels', 'x_train']"),
    "length-mismatch": ({"images": np.zeros((10, 28, 28), np.uint8), "labels": np.arange(7)}, "10 images but 7 labels"),
    "float-labels": ({"images": np.zeros((10, 28, 28), np.uint8), "labels": np.zeros(10)}, "labels must be integers"),
    "nan-images": ({"images": np.full((10, 28, 28), np.nan), "labels": np.arange(10)}, "images contain NaN or inf"),
    "no-images": ({"images": np.zeros((0, 28, 28), np.uint8), "labels": np.zeros(0, np.int64)}, "npz holds no images"),
    "string-images": ({"images": np.full((10, 4, 4), "a"), "labels": np.arange(10)}, "images must be integers or"),
    "object-array": ({"images": np.array([None] * 10, dtype=object), "labels": np.arange(10)}, "not a readable npz"),
    "labels-out-of-range": ({"images": np.zeros((10, 4, 4), np.uint8), "labels": np.arange(10) + 5}, "labels must lie"),
    "negative-labels": ({"images": np.zeros((10, 4, 4), np.uint8), "labels": np.arange(10) - 1}, "found -1-8"),
    "single-class": (
        {"images": np.zeros((10, 4, 4), np.uint8), "labels": np.full(10, 3)},
        "every image has label 3: a classifier needs at least two classes",
    ),
    "floats-in-minus-one-one": (
        {"images": np.linspace(-1, 1, 160).reshape(10, 4, 4), "labels": np.arange(10)},
        "image values lie in [-1, 1]; expected [0, 1] or [0, 255]",
    ),
    "floats-above-255": (
        {"images": np.full((10, 4, 4), 300.0), "labels": np.arange(10)},
        "image values lie in [300, 300]; expected [0, 1] or [0, 255]",
    ),
    "wrong-keys": (
        {"x_train": np.zeros((10, 4, 4)), "y_train": np.arange(10)},
        "npz needs arrays 'images' and 'labels'",
    ),
    "zero-images-4d": ({"images": np.zeros((0, 3, 8, 8), np.float32), "labels": np.zeros(0, np.int64)}, "no images"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz(tmp_path: Path, case: str) -> None:
    arrays, needle = NPZ_CASES[case]
    spec = _npz(tmp_path, **arrays)
    msg = api_error(DataError, load_dataset, spec, "train")
    assert needle in msg and "d.npz" in msg


@pytest.mark.parametrize(
    "case", ["wrong-keys", "floats-in-minus-one-one", "floats-above-255", "labels-out-of-range", "single-class",
             "zero-images-4d"],
)  # fmt: skip
def test_bad_npz_via_cli(tmp_path: Path, case: str, cli_error: Callable[..., str]) -> None:
    """Each bad-data case of a user's npz: one line naming the file and the problem, exit status 2."""
    arrays, needle = NPZ_CASES[case]
    spec = _npz(tmp_path, "mine.npz", **arrays)
    line = cli_error("train", "-d", spec, "-o", tmp_path / "out", "-q")
    assert needle in line and str(tmp_path / "mine.npz") in line


def test_bad_npz_split_file_names_the_part(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits_train.npz", images=np.zeros((10, 4, 4), np.uint8), labels=np.arange(10))
    np.savez(tmp_path / "digits_test.npz", images=np.zeros((10, 4, 4), np.uint8), labels=np.full(10, 12))
    msg = api_error(DataError, load_dataset, f"npz:{tmp_path / 'digits'}", "test")
    assert "digits_test.npz: labels must lie in 0-9" in msg and "found 12-12" in msg


def test_bad_npz_exit_status_in_a_real_process(tmp_path: Path) -> None:
    from ._helpers import assert_subprocess_user_error, run_subprocess

    spec = _npz(tmp_path, "one.npz", images=np.zeros((10, 4, 4), np.uint8), labels=np.full(10, 7))
    p = run_subprocess("train", "-d", spec, "-o", tmp_path / "out", "-q")
    assert_subprocess_user_error(p, "one.npz: every image has label 7")


def test_npz_nothing_found_via_cli(tmp_path: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error("train", "-d", f"npz:{tmp_path / 'digits'}", "-o", tmp_path / "out", "-q")
    for name in ("digits_train.npz", "digits_test.npz", "digits.npz"):
        assert str(tmp_path / name) in line


def test_npz_not_a_zip(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    assert "junk.npz: not a readable npz file" in api_error(DataError, load_dataset, f"npz:{tmp_path / 'junk.npz'}")


def test_npz_missing_file_via_cli(tmp_path: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error("train", "-d", f"npz:{tmp_path / 'absent.npz'}", "-o", tmp_path / "out", "-q")
    assert f"{tmp_path / 'absent.npz'}: no such file or folder" in line


def test_npz_missing_keys_as_merge_data(
    tmp_path: Path, tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]
) -> None:
    spec = _npz(tmp_path, "merge.npz", pixels=np.zeros((10, 28, 28), np.uint8))
    line = cli_error("merge", *tiny_pair, "--method", "am", "--data", spec, "--data-root", shared_data)
    assert "merge.npz: npz needs arrays 'images' and 'labels', has ['pixels']" in line


def test_folder_without_images(tmp_path: Path) -> None:
    for c in ("0", "1"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    (tmp_path / "imgs" / "0" / "notes.txt").write_text("not an image")
    assert f"{tmp_path / 'imgs'}: no images found" in api_error(DataError, load_dataset, f"folder:{tmp_path / 'imgs'}")


def test_folder_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    msg = api_error(DataError, load_dataset, f"folder:{tmp_path / 'flat'}")
    assert "flat: no class sub-folders" in msg


def test_folder_with_corrupt_image(tmp_path: Path, cli_error: Callable[..., str]) -> None:
    (tmp_path / "imgs" / "3").mkdir(parents=True)
    (tmp_path / "imgs" / "3" / "x.png").write_bytes(b"\x89PNG but not really")
    line = cli_error("train", "-d", f"folder:{tmp_path / 'imgs'}", "-o", tmp_path / "out", "-q")
    assert "x.png: unreadable image" in line


# --- impossible specs -------------------------------------------------------------------


def test_ipc_larger_than_class(shared_data: Path) -> None:
    msg = api_error(DataError, api.load_merge_data, ["mnist@100000"], data_root=shared_data)
    assert "asked for 100000 images of class 0 but it has only 5923" in msg


def test_ipc_zero_via_cli(tiny_pair: tuple[Path, Path], shared_data: Path, cli_error: Callable[..., str]) -> None:
    line = cli_error("merge", *tiny_pair, "--method", "ste", "--data", "mnist@0", "--data-root", shared_data)
    assert "@K must be a positive integer in dataset spec 'mnist@0'" in line


def test_huge_class_id(shared_data: Path) -> None:
    """Used to overflow inside torch (a ValueError traceback); [0-99999999] built a 10^8 list."""
    for spec in ("mnist[99999999999999999999]", "mnist[0-99999999]"):
        assert "out of range (0-999)" in api_error(DataError, load_dataset, spec, "test", data_root=shared_data)


def test_unknown_dataset_keeps_brackets(tmp_path: Path, cli_error: Callable[..., str]) -> None:
    """The message quotes the spec grammar ``[classes]``; rich markup used to swallow it."""
    line = cli_error("train", "-d", "imagenet[0-4]", "-o", tmp_path / "out")
    assert "unknown dataset 'imagenet[0-4]'" in line and "[classes] and @K)" in line
