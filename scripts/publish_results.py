"""Copy a ``permerge reproduce`` output folder's report into ``docs/results/<name>/``.

Everything small is copied (tables, CSV, plots); of the per-set image grids only those named
with ``--grid`` (10 per class, a few hundred KB each), so the repository stays small. Image links
in ``results.md`` whose file was not copied are dropped and a line says where the rest lives, so
the published page has no broken images (``tests/test_docs.py`` checks every link).

    python scripts/publish_results.py runs/reproduce/mnist-fmnist docs/results/mnist-fmnist \
        --grid mnist_dm10 fashion-mnist_dm10
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def publish(src: Path, dst: Path, grids: list[str]) -> int:
    """Copy the report; return how many image links were dropped."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in {".md", ".csv", ".png"}:
            shutil.copy2(f, dst / f.name)
    for name in grids:
        (dst / "grids").mkdir(exist_ok=True)
        shutil.copy2(src / "grids" / f"{name}.png", dst / "grids" / f"{name}.png")
    return drop_missing_images(dst / "results.md")


def drop_missing_images(page: Path) -> int:
    """Remove image lines whose file is not beside ``page``; say so at the end."""
    kept, dropped = [], 0
    for line in page.read_text().splitlines():
        m = IMAGE.fullmatch(line.strip())
        if m and not (page.parent / m.group(1)).exists():
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        kept += ["", f"({dropped} more images, not copied here to keep the repository small, are in the run folder.)"]
        page.write_text("\n".join(kept) + "\n")
    return dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the reproduce --out folder")
    ap.add_argument("dst", type=Path, help="docs/results/<name>")
    ap.add_argument("--grid", nargs="*", default=[], help="grid images to publish, e.g. mnist_dm10")
    args = ap.parse_args()
    n = publish(args.src, args.dst, args.grid)
    print(f"published {args.src} -> {args.dst} ({n} image links to unpublished files dropped)")


if __name__ == "__main__":
    main()
