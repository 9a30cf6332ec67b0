"""Datasets: readers, locating/downloading, spec strings, and the ImageSet type."""

from .imageset import CIFAR10_NORM, IDENTITY, ImageSet, Normalization, as_imageset, concat
from .spec import DatasetSpec, balanced_sample, load_dataset, parse_spec, select_classes

__all__ = [
    "CIFAR10_NORM",
    "IDENTITY",
    "DatasetSpec",
    "ImageSet",
    "Normalization",
    "as_imageset",
    "balanced_sample",
    "concat",
    "load_dataset",
    "parse_spec",
    "select_classes",
]
