"""Datasets: registered builders returning device-ready :class:`DataBundle` s."""
from .base import Batch, DataBundle, DatasetInfo, Split, carve_validation, eval_batches, train_batches
from .registry import DATASETS, build_dataset, register_dataset

__all__ = ["Batch", "DataBundle", "DatasetInfo", "Split", "carve_validation", "eval_batches",
           "train_batches", "DATASETS", "build_dataset", "register_dataset"]
