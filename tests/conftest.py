"""Shared fixtures for the permerge test suite.

* Every test runs offline (``PERMERGE_OFFLINE=1``) with ``PERMERGE_CACHE`` pointing at a
  fresh temporary folder and ``PERMERGE_DATA`` unset, so no test touches the network or the
  user's cache, whatever the environment of the person running them.
* Real datasets are read from ``../shared/data`` (relative to the repository root). Tests
  that need them take the ``shared_data`` fixture, which skips when the folder is absent.
* Small real subsets are session-scoped: they are loaded once and must not be mutated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The test machines are small and shared: with other jobs running, torch's intra-op thread
# pool spins and small CPU ops get ~100x slower. One thread is fast and predictable
# (override with PERMERGE_TEST_THREADS).
torch.set_num_threads(int(os.environ.get("PERMERGE_TEST_THREADS", "1")))


def shared_data_available() -> bool:
    return (SHARED_DATA / "MNIST" / "raw").is_dir()


def require_shared_data() -> Path:
    """Return the shared data folder or skip the calling test."""
    if not shared_data_available():
        pytest.skip("needs ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session-wide: offline, private cache, no PERMERGE_DATA (covers session fixtures too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PERMERGE_OFFLINE", "1")
        mp.setenv("PERMERGE_CACHE", str(tmp_path_factory.mktemp("permerge-session-cache")))
        mp.delenv("PERMERGE_DATA", raising=False)
        yield
    from permerge.data import spec

    spec._load_base.cache_clear()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per test: a fresh, empty PERMERGE_CACHE; downloads disabled."""
    cache = tmp_path_factory.mktemp("permerge-cache")
    monkeypatch.setenv("PERMERGE_OFFLINE", "1")
    monkeypatch.setenv("PERMERGE_CACHE", str(cache))
    monkeypatch.delenv("PERMERGE_DATA", raising=False)
    return cache


@pytest.fixture
def permerge_cache(_offline: Path) -> Path:
    """The (empty) cache folder PERMERGE_CACHE points at during this test."""
    return _offline


@pytest.fixture
def clear_dataset_cache() -> Iterator[None]:
    """Clear the in-process dataset cache before and after a test that changes what a
    spec resolves to (environment variables, files rewritten under the same path)."""
    from permerge.data import spec

    spec._load_base.cache_clear()
    yield
    spec._load_base.cache_clear()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; the test is skipped when it is absent."""
    return require_shared_data()


@pytest.fixture(scope="session")
def mnist_train(shared_data: Path):  # type: ignore[no-untyped-def]
    """Full MNIST training set (60,000 uint8 images). Read-only."""
    from permerge.data import load_dataset

    return load_dataset("mnist", "train", data_root=shared_data)


@pytest.fixture(scope="session")
def mnist_test(shared_data: Path):  # type: ignore[no-untyped-def]
    """Full MNIST test set (10,000 images). Read-only."""
    from permerge.data import load_dataset

    return load_dataset("mnist", "test", data_root=shared_data)


@pytest.fixture(scope="session")
def mnist_small(shared_data: Path):  # type: ignore[no-untyped-def]
    """50 real MNIST training images per class (``mnist@50``, seed 0). Read-only."""
    from permerge.data import load_dataset

    return load_dataset("mnist@50", "train", data_root=shared_data, seed=0)


@pytest.fixture(scope="session")
def mnist_tiny_test(shared_data: Path):  # type: ignore[no-untyped-def]
    """5 real MNIST test images per class (``mnist@5``). Read-only."""
    from permerge.data import load_dataset

    return load_dataset("mnist@5", "test", data_root=shared_data, seed=0)


def idx_bytes(array) -> bytes:  # type: ignore[no-untyped-def]
    """Encode a uint8 numpy array in the IDX format (magic 00 00 08 ndim, big-endian dims)."""
    import struct

    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


@pytest.fixture
def write_idx():  # type: ignore[no-untyped-def]
    """``write_idx(path, array, gz=False)``: write ``array`` as an IDX file, optionally gzipped."""
    import gzip

    def write(path: Path, array, gz: bool = False) -> Path:  # type: ignore[no-untyped-def]
        raw = idx_bytes(array)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(raw) if gz else raw)
        return path

    return write


@pytest.fixture
def fake_mnist_root(tmp_path: Path, write_idx):  # type: ignore[no-untyped-def]
    """A tiny MNIST-layout data root (``MNIST/raw``): 20 train / 10 test synthetic images,
    gzipped like the canonical files; image ``i`` is filled with the value ``i``."""
    import numpy as np

    root = tmp_path / "fake-root"
    raw = root / "MNIST" / "raw"
    for stem_x, stem_y, n in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 20),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10),
    ):
        x = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{stem_x}.gz", x, gz=True)
        write_idx(raw / f"{stem_y}.gz", y, gz=True)
    return root
