"""Datasets: registered builders returning a :class:`DataBundle` (device-resident or DataLoader)."""
from .base import (
                   Batch,
                   DataBundle,
                   DatasetInfo,
                   IndexedDataset,
                   LoaderBundle,
                   Split,
                   TensorBundle,
                   carve_validation,
                   stratified_split,
)
from .registry import DATASETS, build_dataset, load_data, register_dataset, static_shape, static_train_size

__all__ = ["Batch", "DataBundle", "DatasetInfo", "IndexedDataset", "LoaderBundle", "Split", "TensorBundle",
           "carve_validation", "stratified_split", "DATASETS", "build_dataset", "load_data", "register_dataset",
           "static_shape", "static_train_size"]
