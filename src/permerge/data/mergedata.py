"""Merge data: labelled images from each source dataset, drawn in balanced batches.

Merging two models needs data from *both* tasks; when one source is the full training set
and the other ten images per class, plain shuffling would drown the small one. Batches here
take an equal share from every source, each source cycling through its own shuffled order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..augment import default_augment
from ..errors import DataError
from .imageset import ImageSet, concat
from .spec import load_dataset


@dataclass(frozen=True)
class MergeData:
    sources: tuple[ImageSet, ...]

    def __post_init__(self) -> None:
        if not self.sources:
            raise DataError("merge data is empty: give at least one dataset")
        for s in self.sources:
            if len(s) == 0:
                raise DataError(f"merge data source {s.name} is empty")
        shapes = {s.image_shape for s in self.sources}
        if len(shapes) > 1:
            raise DataError(f"merge data sources have different image shapes {sorted(shapes)}")
        labels = torch.cat([s.labels for s in self.sources]).unique()
        if len(labels) < 2:
            raise DataError("merge data holds a single class: alignment on it would be meaningless")

    @classmethod
    def of(cls, data: ImageSet | Sequence[ImageSet]) -> MergeData:
        return cls((data,) if isinstance(data, ImageSet) else tuple(data))

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def combined(self) -> ImageSet:
        return self.sources[0] if len(self.sources) == 1 else concat(self.sources, "+".join(self.names))

    def sample(self, max_per_source: int, seed: int = 0) -> ImageSet:
        """A fixed random subset (at most ``max_per_source`` per source), for scoring candidates."""
        g = torch.Generator().manual_seed(seed)
        parts = []
        for s in self.sources:
            idx = (
                torch.randperm(len(s), generator=g)[:max_per_source]
                if len(s) > max_per_source
                else torch.arange(len(s))
            )
            parts.append(s.subset(idx))
        return parts[0] if len(parts) == 1 else concat(parts)

    def balanced_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
        augment: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """An endless stream of batches, ``batch_size // len(sources)`` from each source.

        ``augment``: each source's share goes through one random DSA operation (pixel scale,
        before that source's normalisation; no flip for grayscale sources)."""
        augs = [default_augment(s.image_shape[0]) if augment else None for s in self.sources]
        k = len(self.sources)
        share = max(1, batch_size // k)
        orders = [torch.randperm(len(s), generator=generator) for s in self.sources]
        pos = [0] * k
        while True:
            xs, ys = [], []
            for i, s in enumerate(self.sources):
                take = min(share, len(s))
                if pos[i] + take > len(s):
                    orders[i] = torch.randperm(len(s), generator=generator)
                    pos[i] = 0
                idx = orders[i][pos[i] : pos[i] + take]
                pos[i] += take
                xs.append(s.to_input(s.images[idx], device, augment=augs[i], generator=generator))
                ys.append(s.labels[idx].to(device))
            yield torch.cat(xs), torch.cat(ys)

    def epoch_steps(self, batch_size: int) -> int:
        """Steps for one pass over the largest source at the balanced share."""
        share = max(1, batch_size // len(self.sources))
        return max(1, -(-max(len(s) for s in self.sources) // share))


def load_merge_data(
    specs: Sequence[str] | None, *, data_root: str | os.PathLike[str] | None = None, seed: int = 0
) -> MergeData | None:
    """One source per spec (``mnist@10`` = 10 seeded training images per class); ``None``
    for no specs (a method that needs no data)."""
    if not specs:
        return None
    return MergeData(tuple(load_dataset(s, "train", data_root=data_root, seed=seed) for s in specs))
