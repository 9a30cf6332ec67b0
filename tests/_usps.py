"""A USPS fixture in the exact published format: the libsvm multiclass files ``usps.bz2`` /
``usps.t.bz2`` (one line per image: ``label index:value ...`` with a space after every pair,
labels 1-10 = digit + 1, 256 pixel values in [-1, 1], bzip2-compressed)."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np


def usps_line(label: int, values: np.ndarray) -> str:
    """One libsvm line: ``label 1:v1 2:v2 ... 256:v256 `` then a newline."""
    return f"{label} " + "".join(f"{j}:{v:.6g} " for j, v in enumerate(values, 1)) + "\n"


def usps_images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 16x16 'digits' in [-1, 1]: class c lights rows 1+c and 2+c over a noisy background."""
    rng = np.random.default_rng(seed)
    labels = np.arange(10 * n_per_class) % 10
    x = rng.uniform(-1, -0.6, (len(labels), 16, 16))
    for i, c in enumerate(labels):
        x[i, 1 + c : 3 + c, 2:14] = rng.uniform(0.5, 1.0, (2, 12))
    return np.round(x.reshape(len(labels), 256), 6), labels


def write_usps_file(path: Path, values: np.ndarray, digits: np.ndarray, compress: bool = True) -> Path:
    text = "".join(usps_line(int(d) + 1, v) for v, d in zip(values, digits, strict=True)).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(text) if compress else text)
    return path


def write_usps_root(root: Path, train_per_class: int = 30, test_per_class: int = 10, folder: str = "usps") -> Path:
    """``root/<folder>/usps.bz2`` and ``usps.t.bz2``; returns ``root``."""
    for name, n, seed in (("usps.bz2", train_per_class, 0), ("usps.t.bz2", test_per_class, 1)):
        x, y = usps_images(n, seed)
        write_usps_file(root / folder / name, x, y)
    return root
