"""The one dataset type of permerge.

Images stay compact in memory (uint8 for real data; float32 in [0, 1] pixel scale for
synthetic sets) and are normalised per batch, so full MNIST costs 47 MB and loads in
seconds. ``ImageSet`` is a ``torch.utils.data.Dataset``; ``as_imageset`` wraps any other
labelled dataset so the rest of the library needs only this type.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import Dataset

from ..augment import SiameseAugment
from ..errors import DataError


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` applied to pixels scaled to [0, 1]."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
        if mean.numel() == 1 and c > 1:
            mean, std = mean.expand(c), std.expand(c)
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[float]]) -> Normalization:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


IDENTITY = Normalization()
CIFAR10_NORM = Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@dataclass(frozen=True)
class ImageSet(Dataset[tuple[torch.Tensor, int]]):
    """Labelled images ``N x C x H x W`` plus what is needed to feed them to a model."""

    images: torch.Tensor  # uint8 (0-255) or float32 (0-1)
    labels: torch.Tensor  # int64, original label ids (a class subset keeps them)
    name: str
    normalization: Normalization = IDENTITY
    num_classes: int = 10
    class_names: tuple[str, ...] = ()
    weights: torch.Tensor | None = None  # optional per-sample weights (reduced sets)
    source_indices: torch.Tensor | None = None  # indices into the parent set, if a subset
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DataError(f"{self.name}: images must be N x C x H x W, got {tuple(self.images.shape)}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.name}: {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.images.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"{self.name}: images must be uint8 or float32, got {self.images.dtype}")
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), "
                f"got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    # --- Dataset protocol -------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.to_input(self.images[i : i + 1])[0], int(self.labels[i])

    # --- shape and conversion -----------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def to_pixels(self, images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        """Stored images (uint8 or [0,1] float) as float [0, 1] pixels: the space augmentations act in."""
        x = images.to(device) if device is not None else images
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def to_input(
        self,
        images: torch.Tensor,
        device: torch.device | str | None = None,
        augment: SiameseAugment | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Convert stored images (uint8 or [0,1] float) to normalised model input; with
        ``augment``, one random DSA operation (drawn from ``generator``) is applied to the
        batch in pixel space first, where fills and colour shifts mean what they say."""
        x = self.to_pixels(images, device)
        if augment is not None:
            if generator is None:
                raise ValueError("an augmented batch needs a generator (augmentation is seeded)")
            x = augment(x, augment.sample(generator))
        return self.normalization.apply(x)

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: torch.Tensor, name: str | None = None) -> ImageSet:
        idx = indices.long()
        parent = self.source_indices[idx] if self.source_indices is not None else idx
        return replace(
            self,
            images=self.images[idx],
            labels=self.labels[idx],
            weights=None if self.weights is None else self.weights[idx],
            source_indices=parent,
            name=name or self.name,
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield normalised ``(x, y)`` batches; the fast path that training uses."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - (n % batch_size) if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            x = self.to_input(self.images[idx], device)
            y = self.labels[idx].to(device) if device is not None else self.labels[idx]
            yield x, y


def concat(sets: Sequence[ImageSet], name: str | None = None) -> ImageSet:
    """Concatenate image sets that share shape; images are promoted to float if mixed."""
    if not sets:
        raise DataError("no datasets to concatenate")
    shapes = {s.image_shape for s in sets}
    if len(shapes) != 1:
        raise DataError(f"datasets have different image shapes: {sorted(shapes)}")
    norms = {s.normalization for s in sets}
    if len(norms) != 1:
        raise DataError("datasets use different normalisations and cannot be mixed")
    if len({s.images.dtype for s in sets}) == 1:
        images = torch.cat([s.images for s in sets])
    else:
        images = torch.cat([s.images.float() / 255 if s.images.dtype == torch.uint8 else s.images for s in sets])
    weights = None
    if any(s.weights is not None for s in sets):
        weights = torch.cat([s.weights if s.weights is not None else torch.ones(len(s)) for s in sets])
    return ImageSet(
        images=images,
        labels=torch.cat([s.labels for s in sets]),
        name=name or "+".join(s.name for s in sets),
        normalization=sets[0].normalization,
        num_classes=max(s.num_classes for s in sets),
        class_names=sets[0].class_names,
        weights=weights,
    )


def as_imageset(data: Dataset | ImageSet, name: str = "dataset", num_classes: int = 10) -> ImageSet:
    """Wrap any ``torch.utils.data.Dataset`` of ``(image, label)`` into an :class:`ImageSet`.

    Items are taken as already-normalised float tensors (what a torch Dataset usually
    yields), so the wrapper uses the identity normalisation.
    """
    if isinstance(data, ImageSet):
        return data
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError as e:
        raise DataError(f"{name}: dataset has no length") from e
    if n == 0:
        raise DataError(f"{name}: dataset is empty")
    xs, ys = [], []
    for i in range(n):
        x, y = data[i]
        xs.append(torch.as_tensor(x, dtype=torch.float32))
        ys.append(int(y))
    images = torch.stack(xs)
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return ImageSet(images=images, labels=torch.tensor(ys), name=name, num_classes=num_classes)
